"""Models: one factory over a registry of seed architectures and timm backbones."""

from medxp.models.factory import MODELS, InferenceModel, create_model, model_names

__all__ = ["MODELS", "InferenceModel", "create_model", "model_names"]
