"""Search spaces as data: `search_spaces/<name>.yaml` -> an Optuna define-by-run function.

A space file maps config keys (short, `lr`, or dotted, `train.momentum`) to a distribution:

    optimizer: {type: categorical, choices: [adam, sgd]}
    lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    batch_size: {type: int, low: 16, high: 64, step: 16}
    train.momentum: {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}

`when` makes a parameter conditional on parameters defined above it (a value or a list of
values each). The epoch budget is not a parameter: it is `search.max_epochs`, ASHA's `max_t`.

A categorical choice may be a list, for keys that take one (layer widths):

    hidden_sizes: {type: categorical, choices: [[64], [128, 64], [256, 128, 64]]}

Optuna takes only plain values, so it records such a choice as its JSON text (`"[128, 64]"`);
`SearchSpace.config_values` turns the study's parameters back into config values.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml
from optuna.distributions import FloatDistribution, IntDistribution

from medxp.config import ExperimentConfig, resolve_key
from medxp.errors import MedxpError

SEARCH_SPACES_DIR_ENV = "MEDXP_SEARCH_SPACES_DIR"
TYPES = ("float", "int", "categorical")
_FIELDS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
# The budget belongs to the scheduler (search.max_epochs), not to the sampler.
_BUDGET_KEYS = ("train.epochs",)


@dataclass(frozen=True)
class Parameter:
    """One searched config key and its distribution."""

    name: str
    config_key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def applies(self, chosen: Mapping[str, Any]) -> bool:
        """Whether every `when` condition holds for the values chosen so far."""
        return all(chosen.get(name) in values for name, values in self.when.items())

    def suggest(self, trial: Any) -> Any:
        """Asks an Optuna trial (or Ray's captor of one) for a value; returns it as a config value."""
        if self.type == "categorical":
            return self.config_value(trial.suggest_categorical(self.name, [choice_label(c) for c in self.choices]))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def config_value(self, recorded: Any) -> Any:
        """The config value of what Optuna recorded (a list choice is recorded as its JSON text)."""
        if self.type == "categorical":
            for choice in self.choices:
                if choice_label(choice) == recorded:
                    return choice
        return recorded

    def extremes(self) -> tuple[Any, ...]:
        """Values a config must accept: every choice, or both bounds."""
        return self.choices if self.type == "categorical" else (self.low, self.high)


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a space file, in file order; calling it is Optuna's define-by-run."""

    name: str
    path: Path
    parameters: tuple[Parameter, ...]

    def __call__(self, trial: Any) -> dict[str, Any]:
        """Suggests every applicable parameter; returns `{config key as written: value}`."""
        chosen: dict[str, Any] = {}
        for parameter in self.parameters:
            if parameter.applies(chosen):
                chosen[parameter.name] = parameter.suggest(trial)
        return chosen

    def config_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A study trial's `params` as config values (list choices back from their JSON text)."""
        by_name = {p.name: p for p in self.parameters}
        return {name: by_name[name].config_value(value) if name in by_name else value
                for name, value in params.items()}

    def check_against(self, config: ExperimentConfig) -> None:
        """Raises before any trial runs if the space cannot be searched with `config`.

        Every choice or bound must be a value the config accepts (e.g. a known optimizer),
        and every searched `model.*` key must be read by the model it would act on: the
        config's `model.name`, or, when the space searches `model` itself, each candidate
        model the parameter's `when` lets it apply to. So must every `train.*` key: a model
        fitted in one call (`trainer="estimator"`) reads only a few of them. A key the model
        ignores would spend trials on a no-op.

        Raises:
            MedxpError: naming the space file, the parameter, and the value or the model.
        """
        for parameter in self.parameters:
            for value in parameter.extremes():
                try:
                    config.replace({parameter.config_key: value}, origin=f"{self.path}: parameter '{parameter.name}'")
                except MedxpError as error:
                    raise MedxpError(f"{error} (value {value!r} of the search space)") from None
        self._check_models_read(config)

    def _check_models_read(self, config: ExperimentConfig) -> None:
        from medxp.models.factory import model_info, models_reading  # torch-heavy; only needed here

        searched_model = next((p for p in self.parameters if p.config_key == "model.name"), None)
        for parameter in self.parameters:
            section, _, key = parameter.config_key.partition(".")
            if section not in ("model", "train") or parameter.config_key == "model.name":
                continue
            for model in self._models_for(parameter, searched_model, config.model.name):
                info = model_info(str(model))
                if section == "model" and not info.reads(key):
                    raise MedxpError(f"{self.path}: parameter '{parameter.name}' searches model.{key}, which model "
                                     f"'{model}' does not read: every trial would be a no-op; remove it, or "
                                     f"limit it with when: {{model: [...]}} to models that read it "
                                     f"({', '.join(models_reading(key))})")
                if section == "train" and not info.reads_train(key):
                    raise MedxpError(f"{self.path}: parameter '{parameter.name}' searches train.{key}, which model "
                                     f"'{model}' does not read: it is fitted in one call (trainer "
                                     f"'{info.trainer}'), not by the epoch loop, so every trial would be a no-op; "
                                     f"remove it, or limit it with when: {{model: [...]}} to models trained by "
                                     f"gradient steps")

    @staticmethod
    def _models_for(parameter: Parameter, searched_model: Parameter | None, config_model: str) -> tuple[Any, ...]:
        """The models `parameter` can act on: the config's, or the searched ones its `when` allows."""
        if searched_model is None:
            return (config_model,)
        allowed = parameter.when.get(searched_model.name)
        return tuple(m for m in searched_model.choices if allowed is None or m in allowed)

    def to_dict(self) -> dict[str, Any]:
        """The space as plain data (for logging)."""
        return yaml.safe_load(self.path.read_text()) or {}


def search_spaces_dir() -> Path:
    """`$MEDXP_SEARCH_SPACES_DIR`, else `search_spaces/` beside the package, else under the working directory."""
    if os.environ.get(SEARCH_SPACES_DIR_ENV):
        return Path(os.environ[SEARCH_SPACES_DIR_ENV])
    beside_package = Path(__file__).resolve().parents[3] / "search_spaces"
    return beside_package if beside_package.is_dir() else Path.cwd() / "search_spaces"


def space_path(name_or_path: str) -> Path:
    """A space name (`glaucoma`) -> `search_spaces/glaucoma.yaml`; a path (`x/y.yaml`) is kept."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        return Path(name_or_path).expanduser()
    return search_spaces_dir() / f"{name_or_path}.yaml"


def load_search_space(name_or_path: str | Path) -> SearchSpace:
    """Reads and validates a space file.

    Args:
        name_or_path: A name under `search_spaces/` or a YAML path.

    Returns:
        The validated space.

    Raises:
        MedxpError: missing or unreadable file, or a bad parameter (the message names file and key).
    """
    path = space_path(str(name_or_path))
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        valid = ", ".join(sorted(p.stem for p in search_spaces_dir().glob("*.yaml"))) or "(none)"
        raise MedxpError(f"{path}: cannot read search space ({error.strerror}); spaces found: {valid}") from None
    except yaml.YAMLError as error:
        raise MedxpError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(raw, dict) or not raw:
        raise MedxpError(f"{path}: expected a mapping of config keys to distributions, e.g. "
                         "lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}")
    parameters: list[Parameter] = []
    for name, spec in raw.items():
        parameters.append(parse_parameter(str(name), spec, parameters, path))
    return SearchSpace(path.stem, path, tuple(parameters))


def parse_parameter(name: str, spec: Any, earlier: list[Parameter], path: Path) -> Parameter:
    """Validates one entry of a space file; `earlier` are the parameters above it."""
    where = f"{path}: parameter '{name}'"
    config_key = resolve_key(name, str(path))
    if config_key in _BUDGET_KEYS:
        raise MedxpError(f"{where}: the epoch budget is not searched; set search.max_epochs (ASHA's max_t)")
    if config_key in {p.config_key for p in earlier}:
        raise MedxpError(f"{where}: '{config_key}' appears twice")
    if not isinstance(spec, Mapping) or spec.get("type") not in TYPES:
        found = spec.get("type") if isinstance(spec, Mapping) else spec
        raise MedxpError(f"{where}: type {found!r}: expected a mapping with type one of {', '.join(TYPES)}")
    unknown = set(spec) - _FIELDS[spec["type"]]
    if unknown:
        raise MedxpError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
                         f"a {spec['type']} takes {', '.join(sorted(_FIELDS[spec['type']]))}")
    when = _parse_when(spec.get("when"), earlier, where)
    if spec["type"] == "categorical":
        return Parameter(name, config_key, "categorical", choices=_parse_choices(spec.get("choices"), where),
                         when=when)
    low, high, step, log = _parse_range(spec, where)
    return Parameter(name, config_key, spec["type"], low=low, high=high, step=step, log=log, when=when)


def choice_label(choice: Any) -> Any:
    """What Optuna records for a categorical choice: the value itself, or a list's JSON text."""
    return json.dumps(choice) if isinstance(choice, list) else choice


def _parse_choices(choices: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(choices, list) or not choices:
        raise MedxpError(f"{where}: choices {choices!r}: expected a non-empty list")
    if len(set(map(repr, map(choice_label, choices)))) != len(choices):
        raise MedxpError(f"{where}: choices {choices!r}: expected distinct values")
    if not all(_is_plain(c) or (isinstance(c, list) and c and all(map(_is_plain, c))) for c in choices):
        raise MedxpError(f"{where}: choices {choices!r}: expected plain values (strings, numbers, booleans) "
                         "or non-empty lists of them")
    return tuple(choices)


def _is_plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _parse_range(spec: Mapping[str, Any], where: str) -> tuple[Any, Any, Any, bool]:
    """(low, high, step, log) of a float or int parameter: the types checked here, the range by Optuna."""
    kind = int if spec["type"] == "int" else (int, float)
    for bound in ("low", "high"):
        value = spec.get(bound)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise MedxpError(f"{where}: {bound} = {value!r}: expected {'an integer' if kind is int else 'a number'}")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    if not isinstance(log, bool):
        raise MedxpError(f"{where}: log = {log!r}: expected true or false")
    if step is not None and (not isinstance(step, kind) or isinstance(step, bool)):
        raise MedxpError(f"{where}: step = {step!r}: expected {'an integer' if kind is int else 'a number'}")
    _check_distribution(spec["type"], low, high, step, log, where)
    return low, high, step, log


def _check_distribution(kind: str, low: Any, high: Any, step: Any, log: bool, where: str) -> None:
    """Builds the Optuna distribution the trials will sample, so Optuna's own rules judge the range
    (low <= high, low > 0 on a log scale, step > 0, not step and log together)."""
    distribution = IntDistribution if kind == "int" else FloatDistribution
    try:
        distribution(low, high, log=log, step=1 if step is None and kind == "int" else step)
    except ValueError as error:
        raise MedxpError(f"{where}: {str(error).rstrip('.')} (the rule of Optuna's {distribution.__name__})") from None


def _parse_when(when: Any, earlier: list[Parameter], where: str) -> dict[str, tuple[Any, ...]]:
    """`{optimizer: sgd}` or `{optimizer: [sgd, adamw]}`, on parameters defined above."""
    if when is None:
        return {}
    if not isinstance(when, Mapping) or not when:
        raise MedxpError(f"{where}: when = {when!r}: expected a mapping such as {{optimizer: sgd}}")
    by_name = {p.name: p for p in earlier}
    conditions: dict[str, tuple[Any, ...]] = {}
    for name, values in when.items():
        if name not in by_name:
            raise MedxpError(f"{where}: when '{name}': expected a parameter defined above it "
                             f"({', '.join(by_name) or 'none'})")
        values = tuple(values) if isinstance(values, list) else (values,)
        parent = by_name[name]
        if parent.type == "categorical" and not set(map(repr, values)) <= set(map(repr, parent.choices)):
            raise MedxpError(f"{where}: when '{name}' = {list(values)!r}: expected among its choices "
                             f"{list(parent.choices)!r}")
        conditions[str(name)] = values
    return conditions
