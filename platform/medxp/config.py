"""Experiment configuration: frozen dataclasses whose defaults a project file overrides.

A project file (`projects/<dataset>/project.yaml`) holds only what differs from the
defaults below; command-line overrides (`train.lr=0.01`, or the short names of the
MLproject parameters such as `lr=0.01`) are applied on top. Unknown keys and bad
values are errors that name the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from medxp import medmnist_flags, objectives
from medxp.choices import modality_spec_checks, registered_choices
from medxp.errors import MedxpError

PROJECTS_DIR_ENV = "MEDXP_PROJECTS_DIR"
DATA_DIR_ENV = "MEDXP_DATA_DIR"
RECIPES_DIR_ENV = "MEDXP_RECIPES_DIR"
# A project file's top-level `recipe: <name>` starts it from `recipes/<name>.yaml` (model, train, data,
# search and eval sections several projects share); the project's own sections override the recipe's.
RECIPE_KEY = "recipe"
# An experiment's `recipe: none` drops its project's recipe: the project's sections on medxp's defaults.
NO_RECIPE = "none"


@dataclass(frozen=True)
class DatasetSpec:
    """The dataset contract: what the images are and where they came from."""

    name: str = ""
    layout: str = "folds"
    class_names: tuple[str, ...] = ()
    positive_class: str = ""
    image_size: int = 64
    channels: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    provenance: str = ""
    licence: str = ""
    demo: str = ""
    # Folder names (matched ignoring case, spaces and hyphens) mapped to class names: {no_tumor: notumor}.
    class_aliases: dict[str, str] = field(default_factory=dict)
    # The publisher's identifier `medxp download` fetches: a MedMNIST flag or a Kaggle slug (owner/name).
    source_id: str = ""
    # `tabular`: rows of a CSV (layout csv) with numeric feature columns and a target column.
    modality: str = "image"
    target_column: str = ""
    feature_columns: tuple[str, ...] = ()
    # Target values meaning class_names[0], [1], ... (fetal_health: 1, 2, 3); empty: the names themselves.
    class_values: tuple[float, ...] = ()


@dataclass(frozen=True)
class DataConfig:
    """Where the data is read from and how it is fed."""

    data_dir: str = ""
    fold: int = 0
    demo: str = "auto"
    demo_images_per_class: int = 400
    demo_folds: int = 10
    demo_image_size: int = 128
    augment: bool = True
    augmentation: str = "light"
    sampler: str = "none"
    valid_sampler: str = "none"
    num_workers: int = 0
    cache: bool = True
    cache_dir: str = ""
    split_seed: int = 42
    val_fraction: float = 0.1
    split_fractions: tuple[float, ...] = (0.7, 0.2, 0.1)
    patient_id_pattern: str = ""


@dataclass(frozen=True)
class ModelConfig:
    """Which architecture, and the knobs the seed architectures share."""

    name: str = "small_cnn"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    # Per conv layer; a single value applies to every layer. Padding -1: half the kernel (size-preserving).
    kernel_size: tuple[int, ...] = (3,)
    stride: tuple[int, ...] = (1,)
    padding: tuple[int, ...] = (-1,)
    channel_order: str = "as_given"
    batch_norm: tuple[bool, ...] = (True,)
    # After each conv block (conv stacks, LeNet, VGG: Dropout2d) or hidden layer (mlp); empty: the
    # architecture's default (0.1 for small_cnn, covid_cnn, mlp; none for lenet*, vgg16_*). Models
    # without such layers (timm backbones) refuse it: their dropout before the classifier is head_dropout.
    dropout: tuple[float, ...] = ()
    first_activation: bool = True
    hidden_sizes: tuple[int, ...] = (64, 32)
    head_dropout: float = 0.3
    head_pooling: str = "avg"
    head_batch_norm: bool = False
    # ImageNet weights: auto (when found, else random init with a warning), true (required), false (never).
    pretrained: bool | str = "auto"
    pretrained_file: str = ""
    unfrozen_layers: int = -1
    channels_last: bool = True
    # hist_gradient_boosting (scikit-learn's HistGradientBoostingClassifier, same defaults): learning
    # rate, iteration budget (early stopping on validation may end sooner), leaves per tree, depth
    # (0: no limit), rows per leaf, L2 penalty on leaf values, share of features each split considers.
    gb_learning_rate: float = 0.1
    gb_max_iter: int = 100
    gb_max_leaf_nodes: int = 31
    gb_max_depth: int = 0
    gb_min_samples_leaf: int = 20
    gb_l2_regularization: float = 0.0
    gb_max_features: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and stopping."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 32
    epochs: int = 20
    patience: int = 5
    monitor: str = "val_loss"
    # Hand back the weights of the best `monitor` epoch (false: those of the last epoch trained).
    restore_best: bool = True
    nesterov: bool = False
    scheduler: str = "none"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    grad_clip_norm: float = 0.0
    class_weights: tuple[float, ...] | str = ""
    amp: bool = True
    checkpoint_dir: str = ""
    resume: bool = False
    # Staged fine-tuning in one run: per stage the unfrozen backbone layers, epochs and lr.
    stage_unfrozen_layers: tuple[int, ...] = ()
    stage_epochs: tuple[int, ...] = ()
    stage_lrs: tuple[float, ...] = ()
    seed: int = 42
    device: str = "auto"
    threads: int = 0


@dataclass(frozen=True)
class EvalConfig:
    """How the trained model is judged.

    `operating_point` (binary tasks): the rule that picks the decision threshold on the
    validation split: `youden` (max sensitivity + specificity - 1), `sensitivity@0.95` or
    `specificity@0.90` (at least that value on validation, the best other value).
    `calibration`: `none`, or `temperature` (temperature scaling fitted on validation).
    """

    primary_metric: str = "accuracy"
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    operating_point: str = "youden"
    calibration: str = "none"


@dataclass(frozen=True)
class SearchConfig:
    """How a hyper-parameter search runs: its space, budget, scheduler, sampler and resources.

    Each trial trains with `train.epochs = max_epochs` (ASHA's `max_t`); ASHA may stop it
    at a rung (`grace_period * reduction_factor**k` epochs) when it trails the others.
    With `revisit_rungs` a trial that passed its latest rung early (few others had reached it)
    is stopped once later arrivals put it below the rung's cutoff (`PruningScheduler`).
    A proposal that repeats a finished trial's parameters takes that trial's outcome instead
    of training the same model again, unless `rerun_duplicates` is true.
    `ensemble_top` (the main flow): with K >= 2, the mean of the K best finished trials' models
    is scored on validation and registered instead of the best trial's when it scores higher there;
    with `ensemble_if_better: false` it is registered whenever two or more trials finished (the best
    trial's validation value is the highest of many draws, so on a small validation split it overstates
    that trial and the comparison is tilted against the ensemble).
    `ensemble_with` (the main flow; empty: off): an experiment of the project (`experiments/<name>.yaml`,
    loaded with the main command's overrides) trained `ensemble_with_seeds` times (seeds `train.seed`,
    `+1`, ...) after the search, each a nested run scored on valid; the mean of their models, as one
    member, is averaged with the model the search chose (each half weighing equally) and registered, under
    the same `ensemble_if_better` rule. A companion trained at another image size is fed the project's
    images resized to its own (`medxp.models.ensemble.Resized`). Single-objective searches, no `refit`.
    `cv_folds` (0: off): with K >= 2 a trial's objective is the mean of `val_<eval.primary_metric>` over
    stratified K-fold of the train + valid pool (`medxp.training.estimator.cross_validate`), the
    model it logs still fitted on train; for models fitted in one call (`hist_gradient_boosting`),
    single-objective searches only.
    `refit` (with `cv_folds`): the main flow fits the chosen model (the best trial, or each member of the
    ensemble) again on train + valid, with its settings and iteration count, before the test split scores
    it (`medxp.flows.refit`); multi-class tasks without calibration only, since nothing is left to fit a
    threshold or temperature on.
    `objectives` (`"<metric>:<max|min>"`, e.g. `[val_f1_macro:max, infer_ms:min]`; empty: the single
    `val_<eval.primary_metric>`): with two or more the study is multi-objective, ASHA prunes on the
    first (a per-epoch validation metric, maximised), and `select` (`max val_f1_macro where
    infer_ms <= 20`; empty: max of the first objective) picks the trial of the Pareto front that is
    handed on (`medxp.objectives`). `sampler`: tpe, random, or nsga2 (NSGA-II, generations of
    `startup_trials` trials, at least 4).
    """

    name: str = ""
    space: str = ""
    n_trials: int = 10
    max_concurrent: int = 2
    timeout: float = 0.0
    max_epochs: int = 0
    grace_period: int = 2
    reduction_factor: float = 2.0
    revisit_rungs: bool = True
    sampler: str = "tpe"
    startup_trials: int = 4
    seed: int = 42
    rerun_duplicates: bool = False
    ensemble_top: int = 0
    ensemble_if_better: bool = True
    ensemble_with: str = ""
    ensemble_with_seeds: int = 3
    cv_folds: int = 0
    refit: bool = False
    storage: str = ""
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    ray_cpus: int = 0
    objectives: tuple[str, ...] = ()
    select: str = ""


@dataclass(frozen=True)
class CVConfig:
    """Cross-validation (`medxp.flows.cross_validation`): which folds, one nested run each.

    `source`: `dataset` trains the data's own folds (layout folds: data.fold = 0..K-1);
    `stratified` re-splits train + valid with StratifiedKFold (test fixed); `auto` picks
    `dataset` for the folds layout, else `stratified`. `folds`: K; 0 means every given
    fold (dataset) or 5 (stratified).
    """

    source: str = "auto"
    folds: int = 0


@dataclass(frozen=True)
class AuditConfig:
    """The dataset audit before training: what to do about images that sit in two splits."""

    on_leak: str = "off"
    near_duplicate_distance: int = 16
    fail_on_unreadable: bool = False


@dataclass(frozen=True)
class PromoteConfig:
    """How `medxp promote` judges a candidate against the champion.

    `require_significant`: promote only when the 95% CI of the paired bootstrap difference of
    the primary metric (candidate minus champion, same test cases) excludes 0.
    """

    require_significant: bool = False
    bootstrap_resamples: int = 2000


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs; `source` is the project file it came from."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    source: str = ""

    def to_flat_dict(self) -> dict[str, Any]:
        """`{"train.lr": 0.001, ...}`: the resolved config as MLflow params."""
        flat: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if not dataclasses.is_dataclass(value):
                continue
            for item in dataclasses.fields(value):
                flat[f"{section.name}.{item.name}"] = getattr(value, item.name)
        return flat

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict, YAML-ready."""
        return _plain(dataclasses.asdict(self))

    def replace(self, overrides: Mapping[str, Any], origin: str = "overrides") -> "ExperimentConfig":
        """A copy with dotted-key overrides applied (`{"train.lr": 0.01}`)."""
        nested: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            section, _, name = resolve_key(key, origin).partition(".")
            nested.setdefault(section, {})[name] = value
        merged = self.to_dict()
        for section, values in nested.items():
            merged[section].update(values)
        merged.pop("source", None)
        return _build(merged, origin, source=self.source)


# Short names accepted on the command line and as MLproject parameters.
SHORT_KEYS = {
    "data_dir": "data.data_dir",
    "fold": "data.fold",
    "demo": "data.demo",
    "model": "model.name",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "optimizer": "train.optimizer",
    "weight_decay": "train.weight_decay",
    "patience": "train.patience",
    "seed": "train.seed",
    "dropout": "model.dropout",
    "unfrozen_layers": "model.unfrozen_layers",
    "folds": "cv.folds",
}

# Keys with a fixed set of values; those whose values a registry holds are in medxp.choices.
_CHOICES = {
    "model.channel_order": ("as_given", "ascending", "descending"),
    "model.head_pooling": ("avg", "max"),
    "data.demo": ("auto", "never", "always"),
    "train.monitor": ("val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc"),
    "train.device": ("auto", "cpu", "cuda"),
    "data.sampler": ("none", "oversample"),
    "audit.on_leak": ("off", "warn", "fail", "drop"),
    "data.valid_sampler": ("none", "test_ratio"),
    "eval.primary_metric": ("accuracy", "f1_macro", "f1_weighted", "roc_auc"),
    "eval.calibration": ("none", "temperature"),
    "search.sampler": ("tpe", "random", "nsga2"),
    "cv.source": ("auto", "dataset", "stratified"),
}


def resolve_key(key: str, origin: str) -> str:
    """Maps a short or dotted key to `section.name`, or raises naming the key."""
    dotted = SHORT_KEYS.get(key, key)
    section, _, name = dotted.partition(".")
    sections = {f.name: f for f in dataclasses.fields(ExperimentConfig) if f.name != "source"}
    if section not in sections or not name:
        valid = ", ".join(sorted(sections) + sorted(SHORT_KEYS))
        raise MedxpError(f"{origin}: unknown key '{key}'; expected <section>.<name> with section one of: {valid}")
    names = [f.name for f in dataclasses.fields(sections[section].default_factory())]
    if name not in names:
        raise MedxpError(f"{origin}: unknown key '{dotted}'; valid keys in '{section}': {', '.join(names)}")
    return dotted


def projects_dir() -> Path:
    """The folder holding one sub-folder per dataset project."""
    if os.environ.get(PROJECTS_DIR_ENV):
        return Path(os.environ[PROJECTS_DIR_ENV])
    beside_package = Path(__file__).resolve().parents[2] / "projects"
    if beside_package.is_dir():
        return beside_package
    return Path.cwd() / "projects"


def project_names() -> list[str]:
    """Datasets that have a `project.yaml`."""
    root = projects_dir()
    return sorted(p.parent.name for p in root.glob("*/project.yaml")) if root.is_dir() else []


def project_file(dataset: str) -> Path:
    """Path of `projects/<dataset>/project.yaml`; an unknown dataset lists the valid names."""
    path = projects_dir() / dataset / "project.yaml"
    if not path.is_file():
        if dataset in medmnist_flags.REFUSED:
            raise MedxpError(medmnist_flags.refusal(dataset))
        if dataset in medmnist_flags.FLAGS_2D:
            raise MedxpError(f"dataset '{dataset}': no {path}; it loads as a generic MedMNIST project "
                             f"(load_project), which has no project file")
        valid = ", ".join(project_names()) or f"(none found under {projects_dir()})"
        raise MedxpError(f"unknown dataset '{dataset}': no {path}; valid: {valid}; or any MedMNIST 2D flag "
                         f"(a generic project from MedMNIST's metadata): {', '.join(generic_project_names())}")
    return path


def generic_project_names() -> list[str]:
    """MedMNIST 2D flags accepted as datasets: the ones without a project folder get a generic project."""
    return sorted(medmnist_flags.FLAGS_2D)


def is_generic_project(dataset: str) -> bool:
    """Whether `dataset` loads as a generic MedMNIST project: a MedMNIST 2D flag without `projects/<dataset>/`."""
    return dataset in medmnist_flags.FLAGS_2D and not (projects_dir() / dataset / "project.yaml").is_file()


def load(path: str | Path, overrides: Mapping[str, Any] | None = None,
         experiment: str | Path | None = None) -> ExperimentConfig:
    """Reads a project file, applies an experiment file and overrides, validates.

    Args:
        path: A project YAML file.
        overrides: Dotted or short keys to values; strings are parsed as YAML scalars.
        experiment: An experiment YAML file: sections that override the project file's
            (one variant of a study, e.g. an ablation step).

    Returns:
        The frozen, validated config.

    Raises:
        MedxpError: unreadable file, unknown key or bad value (the message names file and key).
    """
    path = Path(path)
    recipe = _read_sections(Path(experiment)).get(RECIPE_KEY) if experiment else None
    config = _build(_read_project(path, recipe, str(experiment)), str(path), source=str(path))
    return _with_variants(config, overrides, experiment)


def recipes_dir() -> Path:
    """`$MEDXP_RECIPES_DIR`, else `recipes/` beside the package, else under the working directory."""
    if os.environ.get(RECIPES_DIR_ENV):
        return Path(os.environ[RECIPES_DIR_ENV])
    beside_package = Path(__file__).resolve().parents[2] / "recipes"
    return beside_package if beside_package.is_dir() else Path.cwd() / "recipes"


def recipe_names() -> list[str]:
    """The recipes a project file may name (`recipes/<name>.yaml`)."""
    root = recipes_dir()
    return sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []


def project_recipe(dataset: str) -> str:
    """The recipe a project starts from, or '' (a generic MedMNIST project has none)."""
    if is_generic_project(dataset):
        return ""
    return str(_read_sections(project_file(dataset)).get(RECIPE_KEY) or "")


def _read_project(path: Path, recipe: Any = None, recipe_origin: str = "") -> dict[str, Any]:
    """A project file's sections, on top of its recipe's when it names one (section by section, key by key).

    `recipe` (an experiment's own `recipe:`, read from `recipe_origin`) replaces the project's;
    `none` starts the project's sections from medxp's defaults.
    """
    sections = dict(_read_sections(path))
    own = sections.pop(RECIPE_KEY, None)
    name, origin = (own, str(path)) if recipe is None else (recipe, recipe_origin)
    if name is None or name == NO_RECIPE:
        return sections
    recipe_path = recipes_dir() / f"{name}.yaml"
    if not isinstance(name, str) or not recipe_path.is_file():
        valid = ", ".join(recipe_names()) or f"(none found under {recipes_dir()})"
        raise MedxpError(f"{origin}: '{RECIPE_KEY}' = {name!r}: expected '{NO_RECIPE}' or the name of a file "
                         f"under {recipes_dir()}; valid: {valid}")
    recipe = _read_sections(recipe_path)
    if RECIPE_KEY in recipe or "dataset" in recipe:
        raise MedxpError(f"{recipe_path}: a recipe holds model, train, data, search and eval sections; "
                         f"found '{RECIPE_KEY if RECIPE_KEY in recipe else 'dataset'}', which belongs to a project")
    hints = typing.get_type_hints(ExperimentConfig)
    for section, values in recipe.items():  # a bad key or value in a recipe names the recipe's file
        if section not in hints or section == "source" or not isinstance(values, Mapping):
            raise MedxpError(f"{recipe_path}: '{section}': expected a section (model, train, data, search, eval) "
                             "mapping keys to values")
        _build_section(hints[section], section, values, str(recipe_path))
    merged = {section: dict(values) for section, values in recipe.items()}
    for section, values in sections.items():
        merged[section] = {**merged.get(section, {}), **values} if isinstance(values, Mapping) else values
    return merged


def _with_variants(config: ExperimentConfig, overrides: Mapping[str, Any] | None,
                   experiment: str | Path | None) -> ExperimentConfig:
    """`config` with an experiment file's sections, then the overrides, applied."""
    if experiment:
        experiment = Path(experiment)
        flat = {f"{section}.{key}": value for section, values in _read_sections(experiment).items()
                if section != RECIPE_KEY  # applied beneath the project (load)
                for key, value in (values.items() if isinstance(values, Mapping) else [("", values)])}
        config = config.replace(flat, str(experiment))
    if overrides:
        config = config.replace({k: _parse_scalar(v) for k, v in overrides.items()}, "overrides")
    return config


def load_project(dataset: str, overrides: Mapping[str, Any] | None = None,
                 experiment: str | None = None) -> ExperimentConfig:
    """The project's config, with `projects/<dataset>/experiments/<experiment>.yaml` and overrides applied.

    A MedMNIST 2D flag without a project folder loads its generic project
    (`medxp.medmnist_flags.generic_project`): MedMNIST's class names, channels and task, 28 px
    small_cnn defaults, the search space `medmnist`. chestmnist (multi-label) and the 3D flags
    are refused, naming the flag and why.
    """
    if is_generic_project(dataset):
        origin = f"generic MedMNIST project '{dataset}'"
        config = _build(medmnist_flags.generic_project(dataset), origin, source=origin)
        return _with_variants(config, overrides, experiment_file(dataset, experiment) if experiment else None)
    return load(project_file(dataset), overrides, experiment_file(dataset, experiment) if experiment else None)


def experiment_names(dataset: str) -> list[str]:
    """The experiments a project defines (files under `projects/<dataset>/experiments/`); a generic project has none."""
    if is_generic_project(dataset):
        return []
    folder = project_file(dataset).parent / "experiments"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def experiment_file(dataset: str, name: str) -> Path:
    """Path of one experiment of a project; an unknown name lists the project's experiments."""
    if is_generic_project(dataset):
        raise MedxpError(f"unknown experiment '{name}' of dataset '{dataset}': a generic MedMNIST project has no "
                         f"experiments; expected none, or projects/{dataset}/project.yaml with "
                         f"experiments/{name}.yaml beside it")
    path = project_file(dataset).parent / "experiments" / f"{name}.yaml"
    if not path.is_file():
        valid = ", ".join(experiment_names(dataset)) or "(none)"
        raise MedxpError(f"unknown experiment '{name}' of dataset '{dataset}': no {path}; valid: {valid}")
    return path


def _read_sections(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise MedxpError(f"{path}: cannot read config file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise MedxpError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict):
        raise MedxpError(f"{path}: expected a mapping of sections at the top level")
    return raw


def resolve_data_dir(config: ExperimentConfig) -> Path:
    """`data.data_dir`, else `$MEDXP_DATA_DIR/<dataset>`, else `./data/<dataset>`."""
    if config.data.data_dir:
        return Path(config.data.data_dir).expanduser()
    base = os.environ.get(DATA_DIR_ENV) or "data"
    return Path(base).expanduser() / config.dataset.name


def _parse_scalar(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        return value


def _build(raw: Mapping[str, Any], origin: str, source: str) -> ExperimentConfig:
    sections: dict[str, Any] = {}
    hints = typing.get_type_hints(ExperimentConfig)
    for section, values in raw.items():
        if section not in hints or section == "source":
            valid = ", ".join(name for name in hints if name != "source")
            raise MedxpError(f"{origin}: unknown section '{section}'; valid sections: {valid}")
        if not isinstance(values, Mapping):
            raise MedxpError(f"{origin}: section '{section}' must be a mapping of keys to values")
        sections[section] = _build_section(hints[section], section, values, origin)
    config = ExperimentConfig(**sections, source=source)
    _validate(config, origin)
    return config


def _build_section(cls: type, section: str, values: Mapping[str, Any], origin: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        resolve_key(f"{section}.{name}", origin)
        kwargs[name] = _coerce(value, hints[name], f"{section}.{name}", origin)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, origin: str) -> Any:
    """Checks `value` against the field type, converting where it is unambiguous."""
    origin_type = typing.get_origin(hint)
    if origin_type is tuple:
        item_type = typing.get_args(hint)[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(item, item_type, key, origin) for item in items)
    if origin_type in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key, origin)
            except MedxpError:
                continue
        raise MedxpError(f"{origin}: '{key}' = {value!r}: expected {hint}")
    if origin_type is dict:
        if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        raise MedxpError(f"{origin}: '{key}' = {value!r}: expected a mapping of names to names")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise MedxpError(f"{origin}: '{key}' = {value!r}: expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MedxpError(f"{origin}: '{key}' = {value!r}: expected an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise MedxpError(f"{origin}: '{key}' = {value!r}: expected a number")
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise MedxpError(f"{origin}: '{key}' = {value!r}: expected a string")
    return value


def _validate(config: ExperimentConfig, origin: str) -> None:
    flat = config.to_flat_dict()
    for key, choices in {**registered_choices(), **_CHOICES}.items():
        if flat[key] not in choices:
            raise MedxpError(f"{origin}: '{key}' = {flat[key]!r}: expected one of {', '.join(choices)}")
    positive = ["dataset.image_size", "dataset.channels", "train.batch_size", "train.epochs", "train.lr",
                "data.demo_images_per_class", "data.demo_folds", "data.demo_image_size", "eval.bootstrap_resamples",
                "promote.bootstrap_resamples"]
    for key in positive:
        if flat[key] <= 0:
            raise MedxpError(f"{origin}: '{key}' = {flat[key]!r}: expected a positive value")
    checks = [
        ("dataset.class_names", len(config.dataset.class_names) >= 2, "at least two class names"),
        ("dataset.mean", len(config.dataset.mean) == config.dataset.channels, "one value per channel"),
        ("dataset.std", len(config.dataset.std) == config.dataset.channels, "one value per channel"),
        ("data.fold", config.data.fold >= 0, "a fold index >= 0"),
        ("train.patience", config.train.patience >= 0, "a patience >= 0"),
        ("model.dropout", all(0 <= p < 1 for p in config.model.dropout), "probabilities in [0, 1)"),
        ("model.kernel_size", min(config.model.kernel_size, default=0) >= 1, "kernel sizes >= 1"),
        ("model.stride", min(config.model.stride, default=0) >= 1, "strides >= 1"),
        ("model.padding", min(config.model.padding, default=-2) >= -1, "paddings >= 0, or -1 for half the kernel"),
        ("model.hidden_sizes", min(config.model.hidden_sizes, default=1) >= 1, "layer widths >= 1"),
        ("model.head_dropout", 0 <= config.model.head_dropout < 1, "a probability in [0, 1)"),
        ("model.pretrained", config.model.pretrained in (True, False, "auto"), "true, false or auto"),
        ("model.unfrozen_layers", config.model.unfrozen_layers >= -1, "-1 (all), 0 (head only) or a layer count"),
        *_gradient_boosting_checks(config.model),
        ("eval.confidence", 0 < config.eval.confidence < 1, "a level in (0, 1)"),
        ("cv.folds", config.cv.folds == 0 or config.cv.folds >= 2, "0 (all given folds, or 5) or a count >= 2"),
        ("audit.near_duplicate_distance", 0 <= config.audit.near_duplicate_distance < 64,
         "0 to 63 bits of the 256-bit perceptual hash"),
        ("train.label_smoothing", 0 <= config.train.label_smoothing < 1, "a value in [0, 1)"),
        ("train.grad_clip_norm", config.train.grad_clip_norm >= 0, "a norm >= 0 (0: no clipping)"),
        ("train.warmup_epochs", 0 <= config.train.warmup_epochs < config.train.epochs, "0 to train.epochs - 1"),
        ("train.class_weights", _valid_class_weights(config), "'', 'balanced' or one positive weight per class"),
        ("train.stage_epochs", len({len(config.train.stage_unfrozen_layers), len(config.train.stage_epochs),
                                    len(config.train.stage_lrs)}) == 1,
         "as many entries as train.stage_unfrozen_layers and train.stage_lrs"),
        ("data.val_fraction", 0 <= config.data.val_fraction < 1, "a fraction in [0, 1)"),
        ("data.split_fractions", len(config.data.split_fractions) == 3 and min(config.data.split_fractions) > 0
         and abs(sum(config.data.split_fractions) - 1) < 1e-6, "three positive train/valid/test fractions summing to 1"),
        *_search_checks(config.search, config.train.epochs),
        ("search.refit", not config.search.refit or (config.search.cv_folds >= 2
                                                     and len(config.dataset.class_names) != 2
                                                     and config.eval.calibration == "none"),
         "false, or true with search.cv_folds >= 2 (trials ranked without the validation rows' sole say), a "
         "multi-class task and eval.calibration: none (the refit trains on the rows a threshold or temperature "
         "would be fitted on)"),
    ]
    checks += modality_spec_checks(config.dataset)  # what the modality's contract asks of the spec
    lowered_classes = {name.lower() for name in config.dataset.class_names}
    aliases_ok = all(target.lower() in lowered_classes for target in config.dataset.class_aliases.values())
    checks.append(("dataset.class_aliases", aliases_ok, "aliases mapping folder names to dataset.class_names"))
    if config.dataset.positive_class or len(config.dataset.class_names) == 2:
        checks.append(("dataset.positive_class", config.dataset.positive_class in config.dataset.class_names,
                       "one of dataset.class_names (a binary project must name its positive class)"))
    checks.append(("eval.operating_point", _valid_operating_point(config.eval.operating_point),
                   "youden, sensitivity@<target> or specificity@<target> with a target in (0, 1]"))
    for key, ok, expected in checks:
        if not ok:
            raise MedxpError(f"{origin}: '{key}' = {flat[key]!r}: expected {expected}")
    _check_objectives(config, origin)


def _check_objectives(config: ExperimentConfig, origin: str) -> None:
    """`search.objectives` and `search.select`: metrics this task's trials record, a first objective ASHA
    can prune on, a rule in the grammar on the objectives only (`medxp.objectives`)."""
    search = config.search
    if not search.objectives and not search.select:
        return
    try:
        if search.select and len(search.objectives) < 2:
            raise MedxpError(f"'{objectives.SELECT_KEY}' = {search.select!r}: expected it empty with fewer than two "
                             f"{objectives.OBJECTIVES_KEY} (a single-objective search takes its best trial)")
        available = objectives.available_metrics(len(config.dataset.class_names) == 2,
                                                 config.eval.calibration == "temperature")
        parsed = objectives.parse_objectives(search.objectives, available)
        objectives.parse_select(search.select, parsed)
    except MedxpError as error:
        raise MedxpError(f"{origin}: {error}") from None


def parse_operating_point(rule: str) -> tuple[str, float | None]:
    """`youden` -> (`youden`, None); `sensitivity@0.95` -> (`sensitivity`, 0.95).

    Raises:
        MedxpError: any other form, naming `eval.operating_point`.
    """
    kind, _, target = rule.partition("@")
    if kind == "youden" and not target:
        return kind, None
    try:
        value = float(target)
    except ValueError:
        value = float("nan")
    if kind not in ("sensitivity", "specificity") or not 0 < value <= 1:
        raise MedxpError(f"'eval.operating_point' = {rule!r}: expected youden, sensitivity@<target> or "
                         "specificity@<target> with a target in (0, 1], e.g. sensitivity@0.95")
    return kind, value


def _valid_operating_point(rule: str) -> bool:
    try:
        parse_operating_point(rule)
    except MedxpError:
        return False
    return True


def _valid_class_weights(config: ExperimentConfig) -> bool:
    weights = config.train.class_weights
    if isinstance(weights, str):
        return weights in ("", "balanced")
    return len(weights) == len(config.dataset.class_names) and all(w > 0 for w in weights)


def _gradient_boosting_checks(model: ModelConfig) -> list[tuple[str, bool, str]]:
    """(key, ok, expected) checks of the `model.gb_*` keys: scikit-learn's ranges for them."""
    return [
        ("model.gb_learning_rate", model.gb_learning_rate > 0, "a learning rate > 0"),
        ("model.gb_max_iter", model.gb_max_iter >= 1, "at least one iteration"),
        ("model.gb_max_leaf_nodes", model.gb_max_leaf_nodes >= 2, "at least 2 leaves per tree"),
        ("model.gb_max_depth", model.gb_max_depth >= 0, "a depth >= 1, or 0 for no limit"),
        ("model.gb_min_samples_leaf", model.gb_min_samples_leaf >= 1, "at least 1 row per leaf"),
        ("model.gb_l2_regularization", model.gb_l2_regularization >= 0, "a penalty >= 0"),
        ("model.gb_max_features", 0 < model.gb_max_features <= 1, "a share of the features in (0, 1]"),
    ]


def _search_checks(search: SearchConfig, train_epochs: int) -> list[tuple[str, bool, str]]:
    """(key, ok, expected) checks of the search settings."""
    max_epochs = search.max_epochs or train_epochs
    return [
        ("search.n_trials", search.n_trials >= 1, "at least one trial"),
        ("search.max_concurrent", search.max_concurrent >= 1, "at least one concurrent trial"),
        ("search.timeout", search.timeout >= 0, "seconds >= 0 (0: no time limit)"),
        ("search.max_epochs", search.max_epochs >= 0, "epochs >= 0 (0: train.epochs)"),
        # Against train.epochs (max_epochs 0) only when a search starts: a single run may train less.
        ("search.grace_period", search.grace_period >= 1 and (not search.max_epochs or search.grace_period <= max_epochs),
         f"1 to {max_epochs} epochs (search.max_epochs, or train.epochs when it is 0)"),
        ("search.reduction_factor", search.reduction_factor > 1, "a factor > 1"),
        ("search.startup_trials", search.startup_trials >= 0, "a count >= 0"),
        ("search.cpus_per_trial", search.cpus_per_trial > 0, "a CPU count > 0"),
        ("search.gpus_per_trial", search.gpus_per_trial >= 0, "a GPU count (or fraction) >= 0"),
        ("search.ray_cpus", search.ray_cpus >= 0, "a CPU count >= 0 (0: all cores)"),
        ("search.ensemble_top", search.ensemble_top >= 0 and search.ensemble_top != 1,
         "0 (the best trial alone) or a count >= 2 of best trials to average"),
        ("search.ensemble_with_seeds", search.ensemble_with_seeds >= 1, "a count >= 1 of seeds to train"),
        ("search.ensemble_with",
         not (search.ensemble_with and (len(search.objectives) > 1 or search.refit)),
         "empty with search.refit or two or more search.objectives (nothing refits a companion, and a Pareto "
         "front weighs an inference cost an ensemble multiplies), else an experiment of the project"),
        ("search.cv_folds",
         search.cv_folds >= 0 and search.cv_folds != 1 and not (search.cv_folds and len(search.objectives) > 1),
         "0 (trials judged on valid) or a fold count >= 2, with one objective (a Pareto front weighs valid metrics)"),
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
