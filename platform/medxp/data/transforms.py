"""Transforms on decoded uint8 image tensors (torchvision transforms v2), built from the spec."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from medxp.config import DatasetSpec


def create_transforms(spec: DatasetSpec, *, train: bool, augment: bool) -> v2.Compose:
    """uint8 (C, H, W) -> normalised float32; light geometric augmentation for training.

    Flips and small rotations keep a fundus a plausible fundus; colour stays untouched
    because colour carries the diagnosis in most of the studies' modalities.
    """
    steps: list[torch.nn.Module] = []
    if train and augment:
        steps += [v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=10, translate=(0.05, 0.05))]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))]
    return v2.Compose(steps)
