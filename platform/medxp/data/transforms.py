"""Transforms on decoded uint8 image tensors (torchvision transforms v2), built from the spec.

Training augmentation is named by `data.augmentation`: one preset or several joined by `+`
(`flip+rotate20+brightness`), the pieces the seed studies used, plus RandAugment and
TrivialAugment. Evaluation images are only converted and normalised.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

from medxp.config import DatasetSpec
from medxp.named import Registry

AUGMENTATIONS: Registry[Callable[[], list[torch.nn.Module]]] = Registry("augmentation")
# Pieces that need float pixels run after the conversion.
_AFTER_CONVERSION = {"erasing"}

AUGMENTATIONS.register("none")(lambda: [])
AUGMENTATIONS.register("flip")(lambda: [v2.RandomHorizontalFlip()])
AUGMENTATIONS.register("light")(lambda: [v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=10, translate=(0.05, 0.05))])
AUGMENTATIONS.register("rotate20")(lambda: [v2.RandomRotation(20)])
AUGMENTATIONS.register("rotate30")(lambda: [v2.RandomRotation(30)])
# The pneumonia study's brightness multiply 1.2-1.5.
AUGMENTATIONS.register("brightness")(lambda: [v2.ColorJitter(brightness=(1.2, 1.5))])
AUGMENTATIONS.register("perspective")(lambda: [v2.RandomPerspective(distortion_scale=0.2, p=0.5)])
AUGMENTATIONS.register("erasing")(lambda: [v2.RandomErasing(p=0.5, scale=(0.02, 0.1))])
AUGMENTATIONS.register("randaugment")(lambda: [v2.RandAugment()])
AUGMENTATIONS.register("trivialaugment")(lambda: [v2.TrivialAugmentWide()])


def augmentation_names(preset: str) -> list[str]:
    """`"flip+rotate20"` -> `["flip", "rotate20"]`, each checked against the registry."""
    names = [name.strip() for name in preset.split("+") if name.strip()] or ["none"]
    for name in names:
        AUGMENTATIONS.get(name)
    return names


def create_transforms(spec: DatasetSpec, *, train: bool, augment: bool, preset: str = "light") -> v2.Compose:
    """uint8 (C, H, W) -> normalised float32, with the `preset` augmentation for training.

    Args:
        spec: The dataset spec (mean and std per channel).
        train: Whether these are the training split's transforms.
        augment: Augment at all (training only).
        preset: The augmentation, e.g. `light` or `flip+rotate30+brightness`.
    """
    names = augmentation_names(preset) if train and augment else []
    steps = [step for name in names if name not in _AFTER_CONVERSION for step in AUGMENTATIONS.get(name)()]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))]
    steps += [step for name in names if name in _AFTER_CONVERSION for step in AUGMENTATIONS.get(name)()]
    return v2.Compose(steps)
