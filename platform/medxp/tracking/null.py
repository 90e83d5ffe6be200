"""A tracker that keeps everything in memory: for tests and for library use without MLflow."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn


class NullTracker:
    """Records calls in plain attributes so tests can assert what a run would have logged."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[str, float, int | None]] = []
        self.artifacts: dict[str, Any] = {}
        self.models: dict[str, nn.Module] = {}

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.extend((key, float(value), step) for key, value in metrics.items())

    def log_figure(self, figure: Any, path: str) -> None:
        self.artifacts[path] = figure

    def log_dict(self, data: Any, path: str) -> None:
        self.artifacts[path] = data

    def log_text(self, text: str, path: str) -> None:
        self.artifacts[path] = text

    def log_model(self, model: nn.Module, input_example: Any, name: str = "model") -> str | None:
        self.models[name] = model
        return None

    def latest(self, key: str) -> float:
        """The last value logged for a metric."""
        return [value for name, value, _ in self.metrics if name == key][-1]
