"""The data module: a data set's splits as decoded uint8 arrays, with loaders and provenance.

The source named by `dataset.layout` (medxp.data.sources) says which image goes to which
split; the decoded-image cache (medxp.data.cache) decodes each split once per machine.
With `audit.on_leak` set the splits are audited first (medxp.data.audit); a search audits
once on its driver (`prior_audit`) and hands that audit to every trial, which applies the
policy to it instead of scanning the whole data set again.

`dataset.modality` names a `Modality` in `MODALITIES`: how a data set of that kind (images
here, feature rows in medxp.data.tabular) becomes a data module, whether it is audited, and
whether its data may be one file. What differs once the module exists, its subclass carries;
what the modality asks of the dataset spec, and the shape of one input, its contract in
medxp.choices (read without importing this module).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medxp import choices
from medxp.config import DatasetSpec, ExperimentConfig, is_generic_project, resolve_data_dir
from medxp.data import medmnist  # noqa: F401  (registers the medmnist source)
from medxp.data.cache import split_images
from medxp.data.folds import LabelledFiles
from medxp.data.sources import ARRAY_SOURCES, LAYOUTS, read_source
from medxp.data import synthetic_tabular
from medxp.data.synthetic import generate_fundus_demo, is_generated
from medxp.data.transforms import create_transforms
from medxp.errors import MedxpError
from medxp.named import Registry

log = logging.getLogger(__name__)

__all__ = ["ARRAY_SOURCES", "LAYOUTS", "DEMO_GENERATORS", "MODALITIES", "ArrayDataset", "DataModule", "Modality",
           "PriorAudit", "create_datamodule", "ensure_data", "prior_audit"]

DEMO_GENERATORS: Registry[Callable[[Path, ExperimentConfig], Path]] = Registry("demo data generator")


@DEMO_GENERATORS.register("fundus")
def _fundus(root: Path, config: ExperimentConfig) -> Path:
    return generate_fundus_demo(root, images_per_class=config.data.demo_images_per_class,
                                folds=config.data.demo_folds, image_size=config.data.demo_image_size)


@DEMO_GENERATORS.register("ctg")
def _ctg(root: Path, config: ExperimentConfig) -> Path:
    # A fixed row count (the real file's 2,126 exams): data.demo_images_per_class is about images.
    synthetic_tabular.check_spec(config.dataset, config.source)
    return synthetic_tabular.generate_ctg_demo(root)


class ArrayDataset(Dataset):
    """Decoded images (N, C, H, W) uint8 with labels; transforms run per sample on tensors.

    A batch's samples are transformed on one intra-op thread (`__getitems__`, which PyTorch's
    DataLoader calls with a batch's indices): on one small image the thread pool costs more
    than it saves, about 27x for a 28 px random affine and 10x at 224 px, measured on 2 cores
    (bench/data_cache.py prints the loader's figures).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None) -> None:
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def with_transform(self, transform: Callable | None) -> "ArrayDataset":
        """The same images and labels (shared, not copied) under another transform."""
        view = ArrayDataset.__new__(ArrayDataset)
        view.images, view.labels, view.transform = self.images, self.labels, transform
        return view

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.transform is None:
            return [self[index] for index in indices]
        with one_thread():
            return [self[index] for index in indices]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Runs the block on a single intra-op thread, then restores the thread count."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class DataModule:
    """Train/valid/test datasets plus what a run must record about them.

    `files` lists each split's image files (empty for array sources such as MedMNIST);
    `split_hash` identifies which item went to which split. This class holds images; what
    differs for another modality (input statistics, refitting on a fold, explanations) its
    subclass overrides (medxp.data.tabular.TabularDataModule).
    """

    explainable: ClassVar[bool] = True  # LIME image explanations (medxp.explain) apply

    class_names: tuple[str, ...]
    datasets: dict[str, ArrayDataset]
    root: Path
    fingerprint: str
    synthetic: bool
    num_workers: int = 0
    files: dict[str, LabelledFiles] = field(default_factory=dict)
    split_hash: str = ""
    audit: object | None = None  # the AuditReport, when `audit.on_leak` asked for one

    def loader(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader over one split; shuffling is seeded so runs repeat."""
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=shuffle, generator=generator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def evaluation_loader(self, split: str, batch_size: int) -> DataLoader:
        """A loader for scoring one split in order; the train split without its augmentation (the
        validation split's transform), so that train metrics measure the model, not the augmentation."""
        if split != "train":
            return self.loader(split, batch_size)
        train, valid = self.datasets["train"], self.datasets["valid"]
        return DataLoader(train.with_transform(valid.transform), batch_size=batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def class_counts(self, split: str) -> dict[str, int]:
        """Images per class in one split."""
        counts = np.bincount(self.datasets[split].labels.numpy(), minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}

    def input_statistics(self, spec: DatasetSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) an inference model normalises its inputs with: the spec's, per channel."""
        return spec.mean, spec.std

    def fold_transforms(self, train_rows: np.ndarray) -> tuple[Callable | None, Callable | None, dict]:
        """(train transform, valid transform, fields to replace) for a cross-validation fold whose
        train split is `train_rows`: images keep their transforms, which learn nothing from the data."""
        return self.datasets["train"].transform, self.datasets["valid"].transform, {}


@dataclass(frozen=True)
class PriorAudit:
    """An audit made once, before the runs that read the same splits (a search's trials).

    `key` names what was audited (data fingerprint, split hash, near-duplicate distance); a run
    whose source has another key audits its own data instead.
    """

    report: object  # the medxp.data.audit.AuditReport
    key: str

    def covers(self, source, config: ExperimentConfig) -> bool:
        """Whether this audit is of exactly `source`'s splits, with `config`'s audit settings."""
        return self.key == _audit_key(source, config)


@dataclass(frozen=True)
class Modality:
    """One kind of data set (`dataset.modality`): how it becomes a data module, and what applies to it.

    Attributes:
        create: `(config, prior audit) -> DataModule`; finds (or generates) the data and reads it.
        audited: Whether the leak audit (`audit.on_leak`) applies: duplicate images across splits.
        one_file: Whether the data may be a single file (`data_dir=` the file itself).
    """

    create: Callable[[ExperimentConfig, PriorAudit | None], DataModule]
    audited: bool
    one_file: bool


MODALITIES: Registry[Modality] = choices.MODALITIES  # created light there, for config validation


def prior_audit(config: ExperimentConfig) -> PriorAudit | None:
    """The audit `create_datamodule(config)` would make, made now to hand to many runs; None if `audit.on_leak` is off.

    The policy is not applied here: the caller applies `leak_policy` once (a `fail` refuses
    before any run starts), and each run applies it again to this report (`drop`, `warn`).
    """
    if config.audit.on_leak == "off" or not MODALITIES.get(config.dataset.modality).audited:
        return None  # create_datamodule does not audit these either
    source = read_source(ensure_data(config), config)
    return PriorAudit(audit_source(source, config), _audit_key(source, config))


def _audit_key(source, config: ExperimentConfig) -> str:
    return f"{source.fingerprint}/{source.split_hash}/{config.audit.near_duplicate_distance}"


def create_datamodule(config: ExperimentConfig, prior: PriorAudit | None = None) -> DataModule:
    """Finds (or, for the demo, generates) the data and builds the data module of its `dataset.modality`.

    Args:
        config: The resolved config.
        prior: An audit already made of these splits (`prior_audit`, on a search's driver): with
            `audit.on_leak` set, its report is used instead of auditing again.
    """
    return MODALITIES.get(config.dataset.modality).create(config, prior)


def create_image_datamodule(config: ExperimentConfig, prior: PriorAudit | None = None) -> DataModule:
    """Reads the images' source, audits it where `audit.on_leak` asks, loads every split's pixels once."""
    root = ensure_data(config)
    source = read_source(root, config)
    spec = config.dataset
    report, dropped = None, {}
    if config.audit.on_leak != "off":
        from medxp.data.audit import leak_policy, without_rows

        report = _report_for(source, config, prior)
        dropped = leak_policy(report, config.audit.on_leak, config.audit.fail_on_unreadable)
    datasets, files = {}, {}
    for split, part in source.splits.items():
        transform = create_transforms(spec, train=split == "train", augment=config.data.augment,
                                      preset=config.data.augmentation)
        images, labels, files[split] = split_images(source, split, config), part.labels, part.files
        if dropped.get(split):  # only set by the audit branch above, which imported without_rows
            images, labels = without_rows((images, labels), dropped[split])
            files[split] = without_rows(part.files, dropped[split])
        datasets[split] = ArrayDataset(images, labels, transform)
    module = DataModule(spec.class_names, datasets, root, source.fingerprint, is_generated(root),
                        config.data.num_workers, files, source.split_hash, report)
    if module.synthetic:
        log.warning("DEMO DATA: %s is GENERATED synthetic data, not real patients", root)
    return module


MODALITIES.register("image")(Modality(create_image_datamodule, audited=True, one_file=False))


def _report_for(source, config: ExperimentConfig, prior: PriorAudit | None):
    """The prior audit's report when it covers `source`, else a new audit of `source`."""
    if prior is not None and prior.covers(source, config):
        return prior.report
    if prior is not None:
        log.info("the audit handed to this run is of other splits; auditing this run's data")
    return audit_source(source, config)


def audit_data(config: ExperimentConfig):
    """The audit (medxp.data.audit.AuditReport) of the project's data as the run would read it."""
    return audit_source(read_source(ensure_data(config), config), config)


def audit_source(source, config: ExperimentConfig):
    """Audits files where the source has them, else its decoded arrays (MedMNIST)."""
    from medxp.data.audit import audit_arrays, audit_files

    options = {"max_distance": config.audit.near_duplicate_distance, "dataset": config.dataset.name}
    if all(part.files for part in source.splits.values()):
        return audit_files({split: part.files for split, part in source.splits.items()},
                           config.dataset.class_names, **options)
    arrays = {split: (split_images(source, split, config), part.labels) for split, part in source.splits.items()}
    return audit_arrays(arrays, config.dataset.class_names, **options)


def ensure_data(config: ExperimentConfig) -> Path:
    """The data folder (or array file), generating the demo data where that is wanted."""
    root = resolve_data_dir(config)
    demo, generator = config.data.demo, config.dataset.demo
    if demo == "always" or (demo == "auto" and not root.exists()):
        if not generator:
            fetch = (f", or fetch it with `medxp download {config.dataset.name}`"
                     if config.dataset.layout == "medmnist" else "")
            raise MedxpError(f"{root}: data folder not found, and dataset '{config.dataset.name}' has no demo "
                             f"data generator; put the data there or pass data_dir={fetch}")
        return DEMO_GENERATORS.get(generator)(root, config)
    if root.is_file() and (config.dataset.layout in ARRAY_SOURCES or MODALITIES.get(config.dataset.modality).one_file):
        return root
    if not root.is_dir():
        raise MedxpError(f"{root}: data folder not found (data.demo={demo}); expected the "
                         f"'{config.dataset.layout}' layout described in {_layout_docs(config)}")
    if not any(root.iterdir()):
        raise MedxpError(f"{root}: data folder is empty; expected the '{config.dataset.layout}' layout "
                         f"described in {_layout_docs(config)}")
    return root


def _layout_docs(config: ExperimentConfig) -> str:
    """Where the layout a project reads is described: its README, or medxp's for a generic MedMNIST project."""
    if is_generic_project(config.dataset.name):
        return f"README.md, any MedMNIST 2D flag (`medxp download {config.dataset.name}` fetches it)"
    return f"projects/{config.dataset.name}/README.md"
