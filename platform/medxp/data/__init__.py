"""Data: sources that read datasets as their publishers lay them out, demo generators, transforms."""

from medxp.data.datamodule import DataModule, create_datamodule

__all__ = ["DataModule", "create_datamodule"]
