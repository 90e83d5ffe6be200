"""The registries behind the config keys that name a choice; light, so validating a config imports no torch.

`dataset.layout`, `dataset.modality`, `train.optimizer` and `train.scheduler` each name an
entry of a registry here (`REGISTERED_CHOICES`). The modules that build the entries fill
them (medxp.data.sources, medxp.data.medmnist and medxp.data.tabular the layouts,
medxp.data.datamodule and medxp.data.tabular the modalities, medxp.training.optim the
optimizers and schedulers); those import torch, so each registry declares the names its
modules register and medxp.config validates a config from this module alone
(`registered_choices`). tests/unit/test_choices.py checks declarations and registrations
against each other, both ways, so they cannot drift; a plug-in registered later is a valid
choice too.

`MODALITY_CONTRACTS` says per modality what the dataset spec must hold (checked when a
config is loaded) and what one input of the models looks like; what differs once the data
is read, the modality's data module carries (medxp.data.datamodule.Modality).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from medxp.named import Registry

if TYPE_CHECKING:
    from medxp.config import DatasetSpec

# (config key, whether the spec satisfies it, what was expected): a check config validation reports.
SpecCheck = tuple[str, bool, str]


@dataclass(frozen=True)
class ModalityContract:
    """What one modality (`dataset.modality`) asks of its dataset spec.

    Attributes:
        input_shape: `spec -> shape of one model input`: (channels, size, size) for images,
            (feature count,) for table rows.
        images: Whether inputs are images (channels-last memory and ImageNet weights apply).
        spec_checks: `spec -> [(key, ok, expected)]`, run when a config is loaded.
    """

    input_shape: Callable[["DatasetSpec"], tuple[int, ...]]
    images: bool
    spec_checks: Callable[["DatasetSpec"], list[SpecCheck]] = lambda spec: []


def _tabular_spec_checks(spec: "DatasetSpec") -> list[SpecCheck]:
    """A table needs its target and feature columns, and a target value per class where the values are numbers."""
    return [
        ("dataset.target_column", bool(spec.target_column), "the name of the CSV's target column"),
        ("dataset.feature_columns", len(spec.feature_columns) >= 1, "the names of the CSV's feature columns"),
        ("dataset.class_values", len(spec.class_values) in (0, len(spec.class_names)),
         "one target value per class name, or none"),
    ]


MODALITY_CONTRACTS: Registry[ModalityContract] = Registry("data modality")
MODALITY_CONTRACTS.register("image")(ModalityContract(
    input_shape=lambda spec: (spec.channels, spec.image_size, spec.image_size), images=True))
MODALITY_CONTRACTS.register("tabular")(ModalityContract(
    input_shape=lambda spec: (len(spec.feature_columns),), images=False, spec_checks=_tabular_spec_checks))

# Entries: folder layouts `(root, config) -> {split: [(path, label), ...]}` (medxp.data.sources),
# array sources `(root, config) -> SourceData` (medxp.data.medmnist), table layouts
# `TableLayout` (medxp.data.tabular); `dataset.layout` names one of any of the three.
LAYOUTS: Registry[Any] = Registry("data layout",
                                  declared=("class_folders", "folds", "image_folder_splits", "training_testing"))
ARRAY_SOURCES: Registry[Any] = Registry("array data source", declared=("medmnist",))
TABLE_LAYOUTS: Registry[Any] = Registry("table data layout", declared=("csv",))
# Entries: medxp.data.datamodule.Modality; every modality with a contract is one medxp registers.
MODALITIES: Registry[Any] = Registry("data modality", declared=MODALITY_CONTRACTS.in_registration_order())
# Entries: builders of medxp.training.optim.
OPTIMIZERS: Registry[Any] = Registry("optimizer", declared=("adadelta", "adagrad", "adam", "adamw", "rmsprop", "sgd"))
SCHEDULERS: Registry[Any] = Registry("scheduler", declared=("cosine", "none", "onecycle", "plateau"))

REGISTERED_CHOICES: dict[str, tuple[Registry[Any], ...]] = {
    "dataset.layout": (LAYOUTS, ARRAY_SOURCES, TABLE_LAYOUTS),
    "dataset.modality": (MODALITIES,),
    "train.optimizer": (OPTIMIZERS,),
    "train.scheduler": (SCHEDULERS,),
}


def registered_choices() -> dict[str, list[str]]:
    """Each key whose values name a registry entry, with every name it may take (declared or registered), sorted."""
    return {key: sorted({name for registry in registries for name in registry.known_names()})
            for key, registries in REGISTERED_CHOICES.items()}


def modality_contract(spec: "DatasetSpec") -> ModalityContract:
    """The contract of `spec.modality`.

    Raises:
        MedxpError: a modality without a contract, listing those that have one.
    """
    return MODALITY_CONTRACTS.get(spec.modality)


def modality_spec_checks(spec: "DatasetSpec") -> list[SpecCheck]:
    """The checks of `spec.modality`'s contract; none for a plug-in modality registered without one."""
    return MODALITY_CONTRACTS.get(spec.modality).spec_checks(spec) if spec.modality in MODALITY_CONTRACTS else []
