"""A search's objectives and the rule that picks one trial of their Pareto front; light (no torch, no Optuna).

`search.objectives` lists `"<metric>:<max|min>"` entries: `val_<name>` for a validation metric
of a trial's final evaluation (`valid_<name>` in its MLflow run), or a cost the pipeline records
(`infer_ms`, `model_params`, `train_seconds`). The first objective must be a validation metric the
trainer reports every epoch, maximised: ASHA prunes on it alone. An empty list is the single
objective `val_<eval.primary_metric>`, maximised.

`search.select` picks the trial a multi-objective search hands on from the front:
`max|min <objective> [where <objective> <op> <number> [and ...]]`, op one of `<=`, `<`, `>=`, `>`
(default: `max` of the first objective). When no front trial satisfies the `where` clause, the
front's best trial on the first objective is chosen, and the selection says so.

Living beside `config` (not under `search/`, whose package imports Optuna and the config itself),
so that validating a config can parse both without an import cycle.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from medxp.errors import MedxpError

OBJECTIVES_KEY = "search.objectives"
SELECT_KEY = "search.select"
VALIDATION_PREFIX = "val_"
# The validation metrics the trainer reports every epoch (ASHA prunes on one of them).
EPOCH_OBJECTIVES = ("val_accuracy", "val_f1_macro", "val_roc_auc")
# What `pipeline.record_cost` records of every run.
COST_METRICS = ("infer_ms", "model_params", "train_seconds")
# The metrics of a final evaluation (`training.evaluate.evaluate_predictions`): every task's, then those
# of a binary task only (the positive class, the operating point), then those of a temperature-scaled one.
EVALUATION_METRICS = ("accuracy", "precision_macro", "precision_weighted", "recall_macro", "recall_weighted",
                      "f1_macro", "f1_weighted", "roc_auc", "ece", "brier", "nll")
BINARY_METRICS = ("f1", "sensitivity", "specificity", "ppv", "npv", "pr_auc",
                  "op_sensitivity", "op_specificity", "op_ppv", "op_npv", "op_f1")
CALIBRATED_METRICS = ("ece_calibrated", "brier_calibrated", "nll_calibrated")
DIRECTIONS = ("max", "min")
OPERATORS = ("<=", "<", ">=", ">")
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Objective:
    """One objective: a metric and whether more (`max`) or less (`min`) of it is better."""

    metric: str
    direction: str

    @property
    def optuna_direction(self) -> str:
        """`maximize` or `minimize`, as Optuna names the direction."""
        return "maximize" if self.direction == "max" else "minimize"

    @property
    def text(self) -> str:
        """`val_accuracy:max`, the form `search.objectives` takes."""
        return f"{self.metric}:{self.direction}"


@dataclass(frozen=True)
class Condition:
    """One comparison of a `where` clause: `infer_ms <= 20`."""

    metric: str
    operator: str
    threshold: float

    def holds(self, values: Mapping[str, float]) -> bool:
        """Whether the trial's `values` (by metric) satisfy the comparison."""
        value = values[self.metric]
        return {"<=": value <= self.threshold, "<": value < self.threshold,
                ">=": value >= self.threshold, ">": value > self.threshold}[self.operator]

    @property
    def text(self) -> str:
        """`infer_ms <= 20`."""
        return f"{self.metric} {self.operator} {self.threshold:g}"


@dataclass(frozen=True)
class SelectRule:
    """`max val_f1_macro where infer_ms <= 20`: the goal, its metric, the conditions a trial must meet."""

    goal: str
    metric: str
    conditions: tuple[Condition, ...] = ()

    @property
    def text(self) -> str:
        """The rule in the grammar `search.select` takes."""
        where = " and ".join(condition.text for condition in self.conditions)
        return f"{self.goal} {self.metric}" + (f" where {where}" if where else "")


@dataclass(frozen=True)
class FrontTrial:
    """A trial of the Pareto front: its study number and its value of each objective (by metric)."""

    number: int
    values: Mapping[str, float]


@dataclass(frozen=True)
class Selection:
    """The outcome of a select rule on a front: the chosen trial (None on an empty front), whether it met
    the rule's conditions, and a sentence saying which trial and why."""

    rule: SelectRule
    number: int | None
    qualified: bool
    text: str


def available_metrics(binary: bool, calibrated: bool) -> tuple[str, ...]:
    """The objective metrics a task's trials record: `val_<evaluation metric>` and the costs."""
    names = EVALUATION_METRICS + (BINARY_METRICS if binary else ()) + (CALIBRATED_METRICS if calibrated else ())
    return tuple(VALIDATION_PREFIX + name for name in names) + COST_METRICS


def parse_objectives(entries: Sequence[str], available: Sequence[str] | None = None) -> tuple[Objective, ...]:
    """`["val_f1_macro:max", "infer_ms:min"]` -> the objectives, checked.

    Args:
        entries: `search.objectives`.
        available: The metrics the task's trials record (`available_metrics`); None: any
            `val_<name>` or cost is accepted (the task is checked when the config loads).

    Raises:
        MedxpError: an entry not `<metric>:<max|min>`, an unknown metric, a metric listed twice, or a
            first objective ASHA cannot prune on (naming `search.objectives`).
    """
    objectives = tuple(_parse_objective(entry, available) for entry in entries)
    metrics = [objective.metric for objective in objectives]
    repeated = sorted({metric for metric in metrics if metrics.count(metric) > 1})
    if repeated:
        raise MedxpError(f"'{OBJECTIVES_KEY}' = {list(entries)!r}: {', '.join(repeated)} listed twice; expected "
                         "each metric once")
    if objectives and (objectives[0].metric not in EPOCH_OBJECTIVES or objectives[0].direction != "max"):
        raise MedxpError(f"'{OBJECTIVES_KEY}' = {list(entries)!r}: the first objective is {objectives[0].text}; "
                         f"expected one ASHA prunes on every epoch, maximised: "
                         f"{', '.join(metric + ':max' for metric in EPOCH_OBJECTIVES)}")
    return objectives


def _parse_objective(entry: str, available: Sequence[str] | None) -> Objective:
    metric, separator, direction = str(entry).strip().rpartition(":")
    metric, direction = metric.strip(), direction.strip()
    if not separator or direction not in DIRECTIONS or not metric:
        raise MedxpError(f"'{OBJECTIVES_KEY}' entry {entry!r}: expected <metric>:<max|min>, e.g. "
                         "val_f1_macro:max or infer_ms:min")
    known = metric in COST_METRICS or (metric.startswith(VALIDATION_PREFIX) and len(metric) > len(VALIDATION_PREFIX))
    if not known or (available is not None and metric not in available):
        choices = ", ".join(available) if available is not None else \
            f"val_<validation metric> or one of {', '.join(COST_METRICS)}"
        raise MedxpError(f"'{OBJECTIVES_KEY}' entry {entry!r}: unknown metric '{metric}'; expected one this task's "
                         f"trials record: {choices}")
    return Objective(metric, direction)


def objectives_or_default(entries: Sequence[str], primary_metric: str) -> tuple[Objective, ...]:
    """The search's objectives: `entries` parsed, or the single `val_<primary_metric>:max` when empty."""
    return parse_objectives(entries) if entries else (Objective(VALIDATION_PREFIX + primary_metric, "max"),)


def parse_select(text: str, objectives: Sequence[Objective]) -> SelectRule:
    """`max val_f1_macro where infer_ms <= 20 and model_params < 1e6` -> the rule; empty: `max` of the first objective.

    Raises:
        MedxpError: a rule outside the grammar, or one naming a metric that is not an objective
            (naming `search.select`).
    """
    names = [objective.metric for objective in objectives]
    if not text.strip():
        return SelectRule("max", names[0])
    expected = ("expected max|min <objective> [where <objective> <op> <number> [and ...]] with op one of "
                f"{', '.join(OPERATORS)} and objectives {', '.join(names)}")
    head, where = _split_where(text)
    words = head.split()
    if len(words) != 2 or words[0] not in DIRECTIONS:
        raise MedxpError(f"'{SELECT_KEY}' = {text!r}: {expected}")
    conditions = []
    for part in re.split(r"\s+and\s+", where) if where is not None else []:
        match = _CONDITION.match(part)
        threshold = _number(match.group(3)) if match else None
        if threshold is None:
            raise MedxpError(f"'{SELECT_KEY}' = {text!r}: condition {part.strip()!r} is not <objective> <op> "
                             f"<number>; {expected}")
        conditions.append(Condition(match.group(1), match.group(2), threshold))
    unknown = [metric for metric in [words[1], *(c.metric for c in conditions)] if metric not in names]
    if unknown:
        raise MedxpError(f"'{SELECT_KEY}' = {text!r}: {', '.join(unknown)} is not an objective "
                         f"({OBJECTIVES_KEY}: {', '.join(names)}); expected a rule on the objectives only")
    return SelectRule(words[0], words[1], tuple(conditions))


def _split_where(text: str) -> tuple[str, str | None]:
    """(`max val_accuracy`, `infer_ms <= 20`), or the whole text and None without a where clause."""
    parts = re.split(r"\s+where(?:\s+|$)", f" {text.strip()} ", maxsplit=1)
    if len(parts) == 1:
        return text.strip(), None
    return parts[0].strip(), parts[1].strip()


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def objective_values(objectives: Sequence[Objective], valid_metrics: Mapping[str, float],
                     cost: Mapping[str, float]) -> list[float]:
    """Each objective's value of a finished run, in the objectives' order: `val_<name>` from its validation
    metrics, a cost from what the pipeline recorded.

    Raises:
        MedxpError: a metric the run did not record (naming `search.objectives` and what it recorded).
    """
    values = []
    for objective in objectives:
        if objective.metric in COST_METRICS:
            source, name = cost, objective.metric
        else:
            source, name = valid_metrics, objective.metric.removeprefix(VALIDATION_PREFIX)
        if name not in source:
            recorded = [VALIDATION_PREFIX + key for key in valid_metrics] + list(cost)
            raise MedxpError(f"'{OBJECTIVES_KEY}': objective {objective.text}: the run recorded no {objective.metric}; "
                             f"expected one of {', '.join(recorded)}")
        values.append(float(source[name]))
    return values


def select_from_front(front: Sequence[FrontTrial], rule: SelectRule, objectives: Sequence[Objective]) -> Selection:
    """The trial `rule` picks among the front: the best on its metric among those meeting its conditions;
    when none meets them, the front's best on the first objective (maximised), saying so. Ties go to the
    better first objective, then the lower trial number."""
    first = objectives[0].metric
    if not front:
        return Selection(rule, None, False, f"rule `{rule.text}`: no finished trial, nothing to choose")
    qualified = [trial for trial in front if all(condition.holds(trial.values) for condition in rule.conditions)]
    if qualified:
        sign = 1.0 if rule.goal == "max" else -1.0
        chosen = min(qualified, key=lambda t: (-sign * t.values[rule.metric], -t.values[first], t.number))
        why = (f"the {rule.goal} {rule.metric} of the {len(qualified)} of {len(front)} front trial(s) with "
               f"{' and '.join(c.text for c in rule.conditions)}" if rule.conditions
               else f"the {rule.goal} {rule.metric} of the {len(front)} front trial(s)")
        return Selection(rule, chosen.number, True,
                         f"rule `{rule.text}`: trial {chosen.number} ({values_text(chosen.values, objectives)}), "
                         f"{why}")
    chosen = min(front, key=lambda t: (-t.values[first], t.number))
    return Selection(rule, chosen.number, False,
                     f"rule `{rule.text}`: no trial of the front ({len(front)} trial(s)) has "
                     f"{' and '.join(c.text for c in rule.conditions)}; fell back to trial {chosen.number}, the "
                     f"front's best {first} ({values_text(chosen.values, objectives)})")


def values_text(values: Mapping[str, float], objectives: Sequence[Objective]) -> str:
    """`val_accuracy 0.8125, infer_ms 3.21`: a trial's objective values, 4 significant digits."""
    return ", ".join(f"{objective.metric} {values[objective.metric]:.4g}" for objective in objectives)
