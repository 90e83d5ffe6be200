"""The search-and-register flow (`medxp main`): search, evaluate the best trial's model, explain it, register it.

Above `pipeline` (one run) and `search` (many runs): this module only sequences them.
Promotion is a separate, deliberate step (`medxp promote`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from medxp.config import ExperimentConfig
from medxp.errors import MedxpError
from medxp.pipeline import evaluate_and_record, open_logged_model
from medxp.tracking.mlflow_tracker import MlflowTracker

log = logging.getLogger(__name__)


@dataclass
class MainResult:
    """What the main flow produced.

    `explain_metrics` holds what the explanation checks that apply to the data measured, by
    logged metric name (on the fundus demo ``lime_disc_weight_share`` and ``lime_disc_area_share``);
    empty when the data is not explained or no check applies.
    """

    search: object
    test_metrics: dict[str, float]
    registered_name: str
    registered_version: str
    explain_metrics: dict[str, float] = field(default_factory=dict)


def search_explain_register(config: ExperimentConfig, tracker: MlflowTracker, *, search_name: str | None = None,
                            explain_samples: int = 1000) -> MainResult:
    """Runs the project's search under `tracker`'s run, then evaluates, explains and registers the best model.

    Raises:
        MedxpError: no trial finished (nothing to register).
    """
    from medxp.explain import explain_model
    from medxp.promotion import register_model
    from medxp.search import run_search

    search = run_search(config, search_name=search_name, parent_tracker=tracker)
    if search.best_model_uri is None or search.best_config is None:
        raise MedxpError(f"search '{search.study_name}' has no finished trial to register "
                         f"(trials per state: {search.state_counts}); see the failed trials' runs")
    best = search.best_config
    data, model = open_logged_model(best, search.best_model_uri, tracker, {
        "best_trial": str(search.best_trial_number), "best_run_id": str(search.best_run_id)})
    evaluation = evaluate_and_record(model, data, "test", best, tracker)
    explained = explain_model(model, data, best, tracker, num_samples=explain_samples) \
        if data.explainable else None
    version = register_model(tracker.run_id, search.best_model_uri, best, synthetic=data.synthetic)
    log.info("registered %s version %s (test accuracy %.4f)", version.name, version.version,
             evaluation.metrics["accuracy"])
    return MainResult(search, evaluation.metrics, version.name, str(version.version),
                      dict(explained.explain_metrics) if explained else {})
