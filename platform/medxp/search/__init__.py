"""Hyper-parameter search: spaces as YAML data (`space`), Ray Tune + Optuna + ASHA (`runner`).

`run_search` is imported lazily: loading a space must not pull in Ray.
"""

from typing import Any

from medxp.search.space import SearchSpace, load_search_space

__all__ = ["SearchSpace", "load_search_space", "run_search", "SearchResult"]


def __getattr__(name: str) -> Any:
    if name in ("run_search", "SearchResult"):
        from medxp.search import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'medxp.search' has no attribute '{name}'")
