"""Data: sources that read datasets as their publishers lay them out, demo generators, transforms."""

from medxp.data.datamodule import DataModule, create_datamodule
from medxp.data import tabular  # noqa: F401  (registers the csv layout; after datamodule, which it imports)

__all__ = ["DataModule", "create_datamodule"]
