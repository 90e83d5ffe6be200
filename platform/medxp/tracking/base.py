"""The Tracker protocol: everything the pipeline records, and nothing about how."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

from torch import nn


class Tracker(Protocol):
    """Where a run's parameters, metrics, artifacts and model go."""

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_figure(self, figure: Any, path: str) -> None: ...

    def log_dict(self, data: Any, path: str) -> None: ...

    def log_text(self, text: str, path: str) -> None: ...

    def log_model(self, model: nn.Module, input_example: Any, name: str = "model") -> str | None:
        """Stores the model; returns a URI it can be loaded from, if the tracker has one."""
        ...
