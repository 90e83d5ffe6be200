"""Models: one factory over a registry of seed architectures and timm backbones, and the logged-model loader."""

from typing import Any

from medxp.models.ensemble import EnsembleModel, MemberInfo
from medxp.models.factory import MODELS, InferenceModel, create_model, model_names

__all__ = ["MODELS", "EnsembleModel", "InferenceModel", "MemberInfo", "create_model", "load_inference_model",
           "model_names"]


def __getattr__(name: str) -> Any:
    # The loader imports MLflow; loading it on first use keeps `import medxp.models` cheap.
    if name == "load_inference_model":
        from medxp.models.loading import load_inference_model

        return load_inference_model
    raise AttributeError(f"module 'medxp.models' has no attribute '{name}'")
