"""medxp: medical image classification experiments, tracked in MLflow, searched with Optuna on Ray Tune."""

__version__ = "0.1.0"
