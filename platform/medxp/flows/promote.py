"""The promotion flows: `medxp promote` moves the `champion` alias by the no-regression rule, `medxp rollback`
moves it back to `previous`; each decision is recorded in a run."""

from __future__ import annotations

from medxp.config import ExperimentConfig
from medxp.flows.project_data import uses_generated_data
from medxp.promotion import PromotionDecision, promote, rollback
from medxp.tracking.base import Tracker


def promote_and_record(config: ExperimentConfig, tracker: Tracker, *, version: str | None = None,
                       force: bool = False, note: str = "") -> PromotionDecision:
    """Decides on a candidate version of the dataset's model (`medxp.promotion.promote`) and records why.

    Args:
        config: The dataset's config (`promote.*` and `eval.*` settings).
        tracker: The run that records the outcome (tags `promotion.*`, the paired difference, `promotion.txt`).
        version: The candidate version; default the latest.
        force: Promote even if not better (recorded on the version).
        note: Why, recorded on the version.
    """
    decision = promote(config.dataset.name, version=version, synthetic=uses_generated_data(config), force=force,
                       primary_metric=config.eval.primary_metric, note=note,
                       require_significant=config.promote.require_significant,
                       resamples=config.promote.bootstrap_resamples, confidence=config.eval.confidence)
    _record(decision, tracker)
    return decision


def rollback_and_record(config: ExperimentConfig, tracker: Tracker, *, note: str = "") -> PromotionDecision:
    """Moves `champion` back to the `previous` version (`medxp.promotion.rollback`) and records it.

    Raises:
        MedxpError: the dataset has no registered model, or no `previous` version to go back to.
    """
    decision = rollback(config.dataset.name, synthetic=uses_generated_data(config),
                        primary_metric=config.eval.primary_metric, note=note)
    _record(decision, tracker)
    return decision


def _record(decision: PromotionDecision, tracker: Tracker) -> None:
    tracker.set_tags({"promotion.outcome": decision.outcome, "promotion.model": decision.registered_model,
                      "promotion.candidate": decision.candidate_version, "promotion.forced": decision.forced})
    if decision.paired is not None:
        tracker.log_metrics({"paired_difference": decision.paired.difference,
                             "paired_difference_ci_low": decision.paired.ci_low,
                             "paired_difference_ci_high": decision.paired.ci_high})
    tracker.log_text(decision.reason, "promotion.txt")
