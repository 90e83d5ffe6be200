"""The search-and-register flow (`medxp main`): search, evaluate the best trial's model, explain it, register it.

Above `pipeline` (one run) and `search` (many runs): this module only sequences them.
Promotion is a separate, deliberate step (`medxp promote`).

A multi-objective search (`search.objectives`) hands on the trial `search.select` chose on the
Pareto front: it is registered alone (no top-K ensemble, which would multiply the inference cost
the search weighed), and its version records the rule and its outcome (tag `medxp.select`, a
line of the model card).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from typing import Any, Mapping

from torch import nn

from medxp.config import ExperimentConfig
from medxp.data import DataModule
from medxp.errors import MedxpError
from medxp.pipeline import evaluate_and_record, evaluate_inference_model, example_batch, open_logged_model
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
                            explain_samples: int = 1000, overrides: Mapping[str, Any] | None = None) -> MainResult:
    """Runs the project's search under `tracker`'s run, then evaluates, explains and registers the best model.

    `overrides`: the command line's, applied to the `search.ensemble_with` experiment as to `config`.

    Raises:
        MedxpError: no trial finished (nothing to register), or a bad `search.ensemble_with` (before the search).
    """
    from medxp.explain import explain_model
    from medxp.flows.companions import add_companions, companion_configs
    from medxp.promotion import register_model
    from medxp.search import run_search

    companions = companion_configs(config, overrides)
    search = run_search(config, search_name=search_name, parent_tracker=tracker)
    if search.best_model_uri is None or search.best_config is None:
        raise MedxpError(f"search '{search.study_name}' has no finished trial to register "
                         f"(trials per state: {search.state_counts}); see the failed trials' runs")
    best = search.best_config
    data, model = open_logged_model(best, search.best_model_uri, tracker, {
        "best_trial": str(search.best_trial_number), "best_run_id": str(search.best_run_id),
        **search.best_weights})  # the model card states where the registered model's weights came from
    model, model_uri = select_model(search, model, data, best, tracker)
    if companions is not None:
        model, model_uri = add_companions(companions, model, model_uri, chosen_name(search, model), data, best,
                                          tracker)
    if best.search.refit:  # chosen on the search's record; fitted again on train + valid before the test split
        from medxp.flows.refit import refit_selected

        model, model_uri = refit_selected(model, data, tracker, chosen_name(search, model))
    evaluation = evaluate_and_record(model, data, "test", best, tracker)
    explained = explain_model(model, data, best, tracker, num_samples=explain_samples) \
        if data.explainable else None
    selection = search.selection if getattr(search, "multi_objective", False) else ""
    version = register_model(tracker.run_id, model_uri, best, synthetic=data.synthetic, selection=selection)
    log.info("registered %s version %s (test accuracy %.4f)", version.name, version.version,
             evaluation.metrics["accuracy"])
    return MainResult(search, evaluation.metrics, version.name, str(version.version),
                      dict(explained.explain_metrics) if explained else {})


def chosen_name(search: Any, model: nn.Module) -> str:
    """`trial 5`, or `the ensemble of trials 5, 2, 9` for the mean `select_model` chose."""
    members = getattr(model, "members", None)
    if members is None:
        return f"trial {search.best_trial_number}"
    return "the ensemble of trials " + ", ".join(str(number) for number, _, _ in search.ranked_models[:len(members)])


def select_model(search: Any, model: nn.Module, data: DataModule, best: ExperimentConfig,
                 tracker: MlflowTracker) -> tuple[nn.Module, str]:
    """The best trial's model, or the mean of the `search.ensemble_top` best trials' when it scores higher on valid
    (with `search.ensemble_if_better: false`, the mean whenever two or more trials finished).

    Selection uses the validation split only; the test split is scored once, afterwards, on the
    model chosen here. A search ranked by K-fold means (`search.cv_folds`) weighs the ensemble against
    the best trial's own validation value, not its K-fold mean. The run records both validation values
    and the tag `medxp.selected`.
    A multi-objective search's chosen trial is kept as it is: tag `medxp.selected` says why.
    """
    from medxp.search.report import single_metric

    top, metric = best.search.ensemble_top, single_metric(best)
    members = search.ranked_models[:top]
    single = f"trial {search.best_trial_number}"
    if getattr(search, "multi_objective", False):
        ensemble = (f"; no top-{top} ensemble: the search weighed {', '.join(search.objectives)}, and an ensemble "
                    "multiplies the inference cost") if top >= 2 else ""
        tracker.set_tags({"medxp.selected": f"{single}, chosen on the Pareto front by search.select "
                                            f"({search.selection[:3000]}){ensemble}"})
        return model, search.best_model_uri
    if top < 2 or len(members) < 2:
        if top >= 2:
            tracker.set_tags({"medxp.selected": f"{single} (fewer than 2 finished trials to average)"})
        return model, search.best_model_uri
    from medxp.flows.ensemble import build_ensemble, evaluate_ensemble, fit_ensemble_rule, log_ensemble

    try:
        ensemble = fit_ensemble_rule(build_ensemble([uri for _, _, uri in members]), data, best)
        ensemble_value = evaluate_ensemble(ensemble, data, "valid", best).metrics[metric]
    except MedxpError as error:  # members that disagree on input (a searched image size): the best trial alone
        log.warning("no ensemble of the top %d trials: %s", len(members), error)
        tracker.set_tags({"medxp.selected": f"{single} (no ensemble: {str(error)[:300]})"})
        return model, search.best_model_uri
    trials = ", ".join(str(number) for number, _, _ in members)
    single_value = float(search.best_value)
    if best.search.cv_folds:  # ranked on their K-fold means: the ensemble and the best trial are weighed on valid
        single_value = evaluate_inference_model(model, data, "valid", best).metrics[metric]
    tracker.log_metrics({f"valid_{metric}_best_trial": single_value,
                         f"valid_{metric}_ensemble_top{len(members)}": float(ensemble_value)})
    if not ensemble_value > single_value and best.search.ensemble_if_better:
        tracker.set_tags({"medxp.selected": f"{single}: val {metric} {single_value:.4f}, the mean of trials "
                                            f"{trials} {ensemble_value:.4f}"})
        return model, search.best_model_uri
    relation = ">" if ensemble_value > single_value else "<" if ensemble_value < single_value else "="
    rule = "" if best.search.ensemble_if_better else "; search.ensemble_if_better is false: the mean is registered"
    log.info("the mean of trials %s scores val %s %.4f %s %.4f (trial %s alone): registering the ensemble%s",
             trials, metric, ensemble_value, relation, single_value, search.best_trial_number, rule)
    tracker.set_tags({"medxp.selected": f"ensemble of trials {trials}: val {metric} {ensemble_value:.4f} {relation} "
                                        f"{single_value:.4f} ({single} alone){rule}", "model": "ensemble"})
    return ensemble, log_ensemble(ensemble, tracker, example_batch(data))
