"""Model registry: register a run's model as a version; move the `champion` alias only forward.

One registered model per dataset: `<dataset>-classifier`, or `<dataset>-classifier-demo`
when the run used generated data, so a synthetic model can never be served under the
real name. Aliases, not stages (deprecated in MLflow): `champion` is what serving loads
(`models:/<name>@champion`), `previous` is the rollback target.

The no-regression rule: a candidate replaces the champion only when its
`test_<primary metric>` is strictly greater and both were measured on the same test
data (the same `data.fingerprint` tag). `force=True` overrides the rule and says so in
the version's tags. Every decision, promoted or refused, is written as `promotion.*`
tags on the candidate version, so the registry alone tells who became champion and why.

The paired test: a higher point estimate on a few hundred test cases may be luck. Both
versions' per-case test predictions (`evaluation/test_predictions.csv`, logged with every
evaluation) are resampled together, case by case, and the 95% bootstrap interval of the
difference (candidate minus champion) of the primary metric is reported and recorded on
the candidate (`promotion.paired_*`). `require_significant=True` (config
`promote.require_significant`) promotes only when that interval lies above 0.

Attachments: registration copies the run's `evaluation/`, `explanations/` and `config/`
artifacts into the LoggedModel's artifact folder, which is the version's storage
location. They travel with the model and resolve from the version alone, e.g.
`models:/<name>/<version>/evaluation/test_confusion_matrix.png`; the version tags
`artifact.<what>` hold those URIs.
"""

from __future__ import annotations

import getpass
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException

from medxp.config import ExperimentConfig
from medxp.errors import MedxpError

CHAMPION = "champion"
PREVIOUS = "previous"
# Version tag: how a multi-objective search's `search.select` chose the registered model.
SELECT_TAG = "medxp.select"

# Run artifact folders copied next to the model, in the order the model card lists them.
ATTACHED_FOLDERS = ("evaluation", "explanations", "config")
# Version tag `artifact.<label>` -> path inside the model's artifacts (when the run has it).
ARTIFACT_TAGS = {
    "confusion_matrix": "evaluation/test_confusion_matrix.png",
    "confusion_matrix_json": "evaluation/test_confusion_matrix.json",
    "classification_report": "evaluation/test_classification_report.txt",
    "explanations": "explanations",
}
# Per-case test predictions (columns label, prob_<class>...), logged with every test evaluation.
PREDICTIONS_ARTIFACT = "evaluation/test_predictions.csv"
# Registry text columns hold 5000 characters in the SQL stores; stay below.
_MAX_TEXT = 4900


@dataclass(frozen=True)
class PromotionDecision:
    """The outcome of one `promote` (or `rollback`) call, as recorded on the candidate version.

    Attributes:
        registered_model: The registered model name, e.g. `glaucoma-classifier`.
        outcome: `promoted`, `refused`, `unchanged` (already champion) or `rolled_back`.
        promoted: Whether `champion` now points at the candidate because of this call.
        candidate_version: The version that was judged.
        champion_before: The champion version before the call, None when there was none.
        champion_after: The champion version after the call.
        metric: The compared run metric, e.g. `test_accuracy`.
        candidate_value: The candidate's value of `metric`.
        champion_value: The old champion's value of `metric`, None without a champion.
        forced: True when `force` overrode a refusal.
        reason: One readable sentence saying why.
    """

    registered_model: str
    outcome: str
    promoted: bool
    candidate_version: str
    champion_before: str | None
    champion_after: str | None
    metric: str
    candidate_value: float | None
    champion_value: float | None
    forced: bool
    reason: str
    paired: "PairedComparison | None" = None


@dataclass(frozen=True)
class PairedComparison:
    """The paired bootstrap difference of the primary metric, candidate minus champion, same test cases.

    Attributes:
        metric: The compared metric, e.g. `test_accuracy`.
        difference: Candidate minus champion on the whole test set.
        ci_low: Lower bound of the interval of the difference.
        ci_high: Upper bound.
        confidence: The interval's coverage, e.g. 0.95.
        cases: Test cases both versions predicted.
        resamples: Bootstrap resamples drawn.
    """

    metric: str
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    cases: int
    resamples: int

    @property
    def significant(self) -> bool:
        """Whether the interval lies entirely above 0 (the candidate is better beyond resampling noise)."""
        return self.ci_low > 0

    def sentence(self) -> str:
        return (f"paired bootstrap difference of {self.metric} {self.difference:+.4f} "
                f"({self.confidence:.0%} CI {self.ci_low:+.4f} to {self.ci_high:+.4f}, "
                f"{self.cases} test cases, {self.resamples} resamples)")


def registered_model_name(dataset: str, synthetic: bool) -> str:
    """`<dataset>-classifier`, or `<dataset>-classifier-demo` for models trained on generated data."""
    if not dataset:
        raise MedxpError("dataset name is empty; expected the dataset's project name, e.g. glaucoma")
    return f"{dataset}-classifier" + ("-demo" if synthetic else "")


def champion_uri(dataset: str, synthetic: bool) -> str:
    """`models:/<name>@champion`: what serving and `mlflow.pytorch.load_model` take."""
    return f"models:/{registered_model_name(dataset, synthetic)}@{CHAMPION}"


# ---------------------------------------------------------------- registration


def register_model(run_id: str, model_uri: str, config: ExperimentConfig, *, synthetic: bool,
                   selection: str = "") -> ModelVersion:
    """Registers a run's logged model as a new version, with its evaluation attached and a model card.

    Args:
        run_id: The training run that logged the model.
        model_uri: The LoggedModel URI the run returned (`models:/m-...`).
        config: The run's resolved config (dataset name, primary metric, training settings).
        synthetic: Whether the run used generated data; must agree with the run's `data.synthetic` tag.
        selection: How a multi-objective search chose the model (its `search.select` rule and outcome):
            the version's tag `medxp.select` and a line of its model card; empty: neither.

    Returns:
        The new version, with its tags and description set.

    Raises:
        MedxpError: unknown run or model, a run whose tags contradict `config` or `synthetic`,
            or a run missing the fingerprint or the primary test metric.
    """
    client = MlflowClient()
    run = _get_run(client, run_id)
    _check_run_matches(run, config, synthetic)
    model_id = _logged_model_id(client, model_uri)
    name = registered_model_name(config.dataset.name, synthetic)
    attached = _attach_run_artifacts(client, run_id, model_id)
    _ensure_registered_model(client, name, config, synthetic)
    tags = _version_tags(run, config, synthetic, model_id)
    if selection:
        tags[SELECT_TAG] = selection[:5000]  # MLflow keeps a version tag value up to 5000 characters
    version = client.create_model_version(name, source=model_uri, run_id=run_id, model_id=model_id, tags=tags)
    for label, path in ARTIFACT_TAGS.items():
        if any(item == path or item.startswith(path + "/") for item in attached):
            client.set_model_version_tag(name, version.version, f"artifact.{label}",
                                         f"models:/{name}/{version.version}/{path}")
    card = model_card(run, config, synthetic, name=name, version=str(version.version), attached=attached,
                      selection=selection)
    client.update_model_version(name, version.version, description=card)
    return client.get_model_version(name, version.version)


def _get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise MedxpError(f"run_id '{run_id}': no such MLflow run at {mlflow.get_tracking_uri()}") from None


def _check_run_matches(run: Run, config: ExperimentConfig, synthetic: bool) -> None:
    """Refuses a registration whose arguments contradict what the run recorded."""
    tags, run_id = run.data.tags, run.info.run_id
    recorded_synthetic = tags.get("data.synthetic")
    if recorded_synthetic is not None and recorded_synthetic != str(synthetic).lower():
        raise MedxpError(f"run {run_id}: tag 'data.synthetic' is '{recorded_synthetic}' but synthetic={synthetic} "
                         "was asked; expected them to agree (generated-data models go to the -demo name)")
    if tags.get("dataset", config.dataset.name) != config.dataset.name:
        raise MedxpError(f"run {run_id}: tag 'dataset' is '{tags['dataset']}' but config 'dataset.name' is "
                         f"'{config.dataset.name}'; expected the config the run was trained with")
    if not tags.get("data.fingerprint"):
        raise MedxpError(f"run {run_id}: no tag 'data.fingerprint'; expected a run logged by medxp's pipeline "
                         "(promotion compares models only on the same test data)")
    metric = f"test_{config.eval.primary_metric}"
    if metric not in run.data.metrics:
        raise MedxpError(f"run {run_id}: no metric '{metric}' (config 'eval.primary_metric'); expected one of: "
                         f"{', '.join(sorted(_test_metrics(run))) or 'no test_* metrics logged'}")


def _logged_model_id(client: MlflowClient, model_uri: str) -> str:
    """The `m-...` id of a `models:/m-...` URI, checked against the tracking store."""
    model_id = model_uri.removeprefix("models:/").strip("/")
    if not model_uri.startswith("models:/") or "/" in model_id or "@" in model_id:
        raise MedxpError(f"model_uri '{model_uri}': expected a LoggedModel URI models:/m-... (what log_model returns)")
    try:
        return client.get_logged_model(model_id).model_id
    except MlflowException:
        raise MedxpError(f"model_uri '{model_uri}': no such LoggedModel at {mlflow.get_tracking_uri()}") from None


def _attach_run_artifacts(client: MlflowClient, run_id: str, model_id: str) -> list[str]:
    """Copies the run's ATTACHED_FOLDERS into the LoggedModel's artifacts; returns the copied paths."""
    copied: list[str] = []
    with tempfile.TemporaryDirectory(prefix="medxp-attach-") as scratch:
        for folder in ATTACHED_FOLDERS:
            if not client.list_artifacts(run_id, folder):
                continue
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=folder, dst_path=scratch))
            client.log_model_artifacts(model_id, str(local), folder)
            copied += sorted(f"{folder}/{p.relative_to(local).as_posix()}" for p in local.rglob("*") if p.is_file())
    return copied


def _ensure_registered_model(client: MlflowClient, name: str, config: ExperimentConfig, synthetic: bool) -> None:
    """Creates the registered model, with its description, the first time it is needed."""
    try:
        client.get_registered_model(name)
        return
    except MlflowException:
        pass
    spec = config.dataset
    lines = [f"Image classifier for the **{spec.name}** dataset (classes: {', '.join(spec.class_names)}); "
             "input float32 (N, C, H, W) pixels in [0, 1], output class probabilities; served "
             "(`mlflow models serve`, pyfunc) it also takes a column `image` of base64 PNG/JPEG/DICOM files and "
             "answers prob_<class>, label, threshold, model_name, model_version and error per row."]
    if synthetic:
        lines.append("**DEMO**: trained on GENERATED synthetic images, not real patients. Not for clinical use.")
    lines.append(f"Versions come from medxp runs. Alias `{CHAMPION}` is the best version by "
                 f"test_{config.eval.primary_metric} on the same test data (no-regression rule); "
                 f"`{PREVIOUS}` is the rollback target. Each version's description is its model card.")
    if spec.provenance or spec.licence:
        lines.append(f"Data provenance: {spec.provenance or 'not given'}. Licence: {spec.licence or 'not given'}.")
    try:
        client.create_registered_model(name, tags={"dataset": spec.name, "data.synthetic": str(synthetic).lower()},
                                       description=_clip("\n\n".join(lines)))
    except MlflowException as error:
        if "already exists" not in str(error).lower():  # another process created it meanwhile
            raise


def _version_tags(run: Run, config: ExperimentConfig, synthetic: bool, model_id: str) -> dict[str, str]:
    # The SQL registry store keeps no model_id on the version (only `source`), so tag it.
    metric = f"test_{config.eval.primary_metric}"
    tags = {
        "dataset": config.dataset.name,
        "model": run.data.tags.get("model", config.model.name),  # "ensemble" for an ensemble run
        "data.fingerprint": run.data.tags["data.fingerprint"],
        "data.synthetic": str(synthetic).lower(),
        "primary_metric": metric,
        f"metric.{metric}": repr(run.data.metrics[metric]),
        "source.run_id": run.info.run_id,
        "source.model_id": model_id,
    }
    for bound in ("ci_low", "ci_high"):
        if f"{metric}_{bound}" in run.data.metrics:
            tags[f"metric.{metric}_{bound}"] = repr(run.data.metrics[f"{metric}_{bound}"])
    return tags


# ---------------------------------------------------------------- model card


def model_card(run: Run, config: ExperimentConfig, synthetic: bool, *, name: str, version: str,
               attached: list[str], selection: str = "") -> str:
    """The version description: a short Markdown model card built from the run and its config (and how the
    model was chosen: for a multi-objective search's model, by `search.select`; else the run's `medxp.selected`)."""
    sections = [
        f"### {name} v{version}: {run.data.tags.get('model', config.model.name)}",
        _data_section(run, config, synthetic),
        _metrics_section(run, config),
        *([_selection_section(config, selection)] if selection else []),
        # What the main flow chose on validation (the best trial, the mean of the best few, with companions).
        *([f"**Chosen on validation**: {run.data.tags['medxp.selected']}."]
          if not selection and run.data.tags.get("medxp.selected") else []),
        _training_section(run, config),
        _provenance_section(run, attached),
    ]
    return _clip("\n\n".join(sections))


def _selection_section(config: ExperimentConfig, selection: str) -> str:
    """`**Selection**`: the objectives a multi-objective search weighed on validation, and how its rule chose."""
    objectives = ", ".join(f"`{entry}`" for entry in config.search.objectives)
    return (f"**Selection**: chosen on the Pareto front of a multi-objective search ({objectives}, on the "
            f"validation split) by `search.select`: {selection}.")


def _data_section(run: Run, config: ExperimentConfig, synthetic: bool) -> str:
    kind = "GENERATED synthetic demo data (not real patients)" if synthetic else "real data"
    lines = [f"**Data**: {config.dataset.name}, {kind}; fingerprint `{run.data.tags['data.fingerprint']}`; "
             f"classes: {', '.join(config.dataset.class_names)}; "
             f"{_input_description(config)} input."]
    counts = _class_counts(run.info.run_id)
    for split, per_class in counts.items():
        lines.append(f"- {split}: " + ", ".join(f"{label} {count}" for label, count in per_class.items()))
    return "\n".join(lines)


def _class_counts(run_id: str) -> dict[str, dict[str, int]]:
    """`{split: {class: count}}` from the run's `config/environment.json`, {} when absent."""
    try:
        environment = mlflow.artifacts.load_dict(f"runs:/{run_id}/config/environment.json")
    except Exception:  # absent or unreadable: the card simply leaves the counts out
        return {}
    counts = environment.get("data", {}).get("class_counts", {})
    return counts if isinstance(counts, dict) else {}


def _metrics_section(run: Run, config: ExperimentConfig) -> str:
    metrics, level = run.data.metrics, f"{config.eval.confidence:.0%}"
    primary = f"test_{config.eval.primary_metric}"
    lines = [f"**Test metrics** ({level} bootstrap CI; primary: {primary}):"]
    for key in sorted(_test_metrics(run), key=lambda k: (k != primary, k)):
        interval = ""
        if f"{key}_ci_low" in metrics and f"{key}_ci_high" in metrics:
            interval = f" ({level} CI {metrics[key + '_ci_low']:.3f}-{metrics[key + '_ci_high']:.3f})"
        lines.append(f"- {key.removeprefix('test_')}: {metrics[key]:.3f}{interval}")
    return "\n".join(lines)


def _test_metrics(run: Run) -> list[str]:
    """The run's `test_<metric>` keys, without their CI bounds."""
    return [k for k in run.data.metrics if k.startswith("test_") and not k.endswith(("_ci_low", "_ci_high"))]


def _input_description(config: ExperimentConfig) -> str:
    """`3x64x64` for images, `21 features` for a table."""
    spec = config.dataset
    if spec.modality == "tabular":
        return f"{len(spec.feature_columns)} features" if spec.feature_columns else "tabular"
    return f"{spec.channels}x{spec.image_size}x{spec.image_size}"


def _training_section(run: Run, config: ExperimentConfig) -> str:
    from medxp.models.factory import model_info

    train, model, metrics = config.train, config.model, run.data.metrics
    if model_info(model.name).trainer == "estimator":
        return _estimator_training_section(run, config)
    trained = ""
    if "epochs_trained" in metrics:
        trained = f" (trained {int(metrics['epochs_trained'])}, best epoch {int(metrics.get('best_epoch', 0))})"
    if train.stage_epochs:  # a staged fine-tune reads each stage's layers, epochs and lr, not the single ones
        stages = "; ".join(f"stage {i}: {_unfrozen(layers)}, {epochs} epochs at lr {lr:g}" for i, (layers, epochs, lr)
                           in enumerate(zip(train.stage_unfrozen_layers, train.stage_epochs, train.stage_lrs), 1))
        schedule = f"fine-tuned in stages ({stages}){trained}"
        settings = _model_settings(run, model).removesuffix(", ")
    else:
        schedule = f"lr {train.lr:g}, epochs {train.epochs}{trained}"
        settings = f"{_model_settings(run, model)}unfrozen_layers {model.unfrozen_layers}"
    return (f"**Training**: {run.data.tags.get('model', model.name)} ({settings}); optimizer {train.optimizer}, "
            f"{schedule}, weight decay {train.weight_decay:g}, batch size {train.batch_size}, "
            f"patience {train.patience} on {train.monitor}, seed {train.seed}.")


def _unfrozen(layers: int) -> str:
    return {0: "head only", -1: "every layer"}.get(layers, f"head and last {layers} layers")


def _estimator_training_section(run: Run, config: ExperimentConfig) -> str:
    """A model fitted in one call (`training.estimator`): its own `model.*` settings and the `train.*` keys it read."""
    from medxp.models.factory import model_info

    train, model, metrics = config.train, config.model, run.data.metrics
    settings = ", ".join(f"{key} {_number(getattr(model, key))}" for key in model_info(model.name).accepts)
    fitted = ""
    if "epochs_trained" in metrics:
        fitted = (f" (fitted {int(metrics['epochs_trained'])} iterations, kept "
                  f"{int(metrics.get('restored_epoch', metrics['epochs_trained']))})")
    stopping = (f"early stopping after {train.patience} iterations without improvement of {train.monitor} "
                "on the validation split" if train.patience else "no early stopping")
    refit = run.data.tags.get("medxp.refit")
    rows = "the train split, then again on train + valid (see Refit)" if refit else "the train split"
    return (f"**Training**: {run.data.tags.get('model', model.name)} fitted in one call on {rows} "
            f"({settings}){fitted}; class weights {train.class_weights or 'none'}, {stopping}, seed {train.seed}."
            + (f" **Refit**: {refit}." if refit else ""))


def _model_settings(run: Run, model) -> str:
    """The tuning knobs the architecture applied (`applied_settings`), e.g. `dropout 0.1, head dropout 0.3, `."""
    from medxp.models.factory import applied_settings

    parts = []
    for key, value in applied_settings(model).items():
        if key == "pretrained":
            value = f"{value} ({run.data.tags.get('model.weights_source', 'weights not recorded')})"
        elif isinstance(value, tuple):
            value = "/".join(f"{item:.3g}" for item in value)
        elif not isinstance(value, (bool, str)):
            value = f"{value:.3g}"
        if value != "":
            parts.append(f"{key.replace('_', ' ')} {value}, ")
    return "".join(parts)


def _provenance_section(run: Run, attached: list[str]) -> str:
    trained_on = datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    registered_on = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = run.data.tags.get("git.commit", "unknown")
    folders = sorted({path.split("/")[0] + "/" for path in attached}) or ["none"]
    return (f"**Provenance**: run `{run.info.run_id}`, trained {trained_on}, registered {registered_on}, "
            f"git {commit}. Attached with the model: {', '.join(folders)} "
            "(e.g. `models:/<name>/<version>/evaluation/test_confusion_matrix.png`).")


# ---------------------------------------------------------------- promotion


def promote(dataset: str, *, version: str | int | None = None, synthetic: bool, force: bool = False,
            primary_metric: str = "accuracy", note: str = "", require_significant: bool = False,
            resamples: int = 2000, confidence: float = 0.95) -> PromotionDecision:
    """Moves `champion` to the candidate when it beats the champion on the same test data.

    Strictly greater `test_<primary_metric>` wins; a tie keeps the champion. Versions tested
    on different data (different `data.fingerprint`) are not compared: that is a refusal.
    The replaced champion gets the alias `previous`. The decision is recorded as
    `promotion.*` tags on the candidate whatever it is.

    Args:
        dataset: The dataset whose registered model to act on.
        version: The candidate version; None takes the latest.
        synthetic: Act on `<dataset>-classifier-demo` instead of the real model.
        force: Promote even when the rule refuses; recorded as `promotion.forced=true`.
        primary_metric: Compared as the run metric `test_<primary_metric>`.
        note: Why (kept in `promotion.note`); expected with `force`.
        require_significant: Also require the paired bootstrap interval of the difference to lie above 0.
        resamples: Bootstrap resamples of the paired comparison.
        confidence: Coverage of its interval.

    Returns:
        The decision, whose `reason` is one readable sentence.

    Raises:
        MedxpError: no such registered model or version, or the candidate lacks the metric.
    """
    client = MlflowClient()
    name = registered_model_name(dataset, synthetic)
    registered = _get_registered_model(client, name)
    candidate = _candidate_version(client, name, version)
    champion = _alias_target(client, registered, CHAMPION)
    metric = f"test_{primary_metric}"
    candidate_value = _version_metric(client, candidate, metric)
    if candidate_value is None:
        raise MedxpError(f"{name} version {candidate.version}: no '{metric}' (tag 'metric.{metric}' or run metric); "
                         "expected the primary_metric the versions were evaluated with")
    champion_value = _version_metric(client, champion, metric) if champion else None
    paired, unpaired_why = None, ""
    if champion is not None and str(champion.version) != str(candidate.version):
        paired, unpaired_why = paired_comparison(client, candidate, champion, primary_metric, resamples, confidence)
    outcome, forced, reason = _judge(candidate, champion, metric, candidate_value, champion_value, force)
    if outcome == "promoted" and not forced and champion is not None and require_significant \
            and not (paired is not None and paired.significant):
        why = paired.sentence() + " does not lie above 0" if paired else f"no paired comparison ({unpaired_why})"
        outcome, reason = _significance_refusal(candidate, champion, why, force)
        forced = outcome == "promoted"
    elif champion is not None and outcome != "unchanged":
        reason += f" Its {paired.sentence()}." if paired else f" No paired comparison: {unpaired_why}."
    if outcome == "promoted":
        _move_champion(client, name, candidate, champion)
    before = str(champion.version) if champion else None
    after = str(candidate.version) if outcome == "promoted" else before
    decision = PromotionDecision(name, outcome, outcome == "promoted", str(candidate.version), before, after, metric,
                                 candidate_value, champion_value, forced, reason, paired)
    _record_decision(client, decision, note)
    return decision


def _significance_refusal(candidate: ModelVersion, champion: ModelVersion, why: str, force: bool) -> tuple[str, str]:
    """(outcome, reason) when only promote.require_significant stands in the way."""
    new, old = f"version {candidate.version}", f"champion version {champion.version}"
    if force:
        return "promoted", (f"Forced by {_user()}: promoted {new} over {old} although promote.require_significant "
                            f"refused ({why}).")
    return "refused", (f"Refused {new}: promote.require_significant is set and the {why}; {old} stays "
                       "(force=True overrides).")


def paired_comparison(client: MlflowClient, candidate: ModelVersion, champion: ModelVersion, primary_metric: str,
                      resamples: int = 2000, confidence: float = 0.95) -> tuple[PairedComparison | None, str]:
    """The paired bootstrap of `test_<primary_metric>`, candidate minus champion, or (None, why not).

    Both versions' `evaluation/test_predictions.csv` must hold the same test cases (same labels in
    the same order) and the same classes; versions scored on different data (fingerprints) are
    never paired.
    """
    from medxp.training.metrics import paired_bootstrap_difference

    if not _fingerprint(candidate) or _fingerprint(candidate) != _fingerprint(champion):
        return None, "the versions were not tested on the same data fingerprint"
    tables = {}
    for label, version in (("candidate", candidate), ("champion", champion)):
        tables[label] = _test_predictions(version)
        if tables[label] is None:
            return None, f"version {version.version} has no {PREDICTIONS_ARTIFACT} (registered before medxp logged it)"
    (labels, probs, classes), (champion_labels, champion_probs, champion_classes) = tables["candidate"], tables["champion"]
    if classes != champion_classes or len(labels) != len(champion_labels) or (labels != champion_labels).any():
        return None, "the two prediction tables do not hold the same test cases and classes"
    difference, (low, high) = paired_bootstrap_difference(labels, probs, champion_probs, classes, primary_metric,
                                                          n_resamples=resamples, confidence=confidence)
    return PairedComparison(f"test_{primary_metric}", difference, low, high, confidence, len(labels), resamples), ""


def _test_predictions(version: ModelVersion):
    """(labels, probabilities, class names) from the version's source run, None when it has none."""
    import pandas as pd

    if not version.run_id:
        return None
    try:
        local = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=PREDICTIONS_ARTIFACT)
    except Exception:  # absent: a version registered before predictions were logged
        return None
    table = pd.read_csv(local)
    columns = [column for column in table.columns if column.startswith("prob_")]
    return (table["label"].to_numpy(dtype=int), table[columns].to_numpy(dtype=float),
            tuple(column.removeprefix("prob_") for column in columns))


def _judge(candidate: ModelVersion, champion: ModelVersion | None, metric: str, candidate_value: float,
           champion_value: float | None, force: bool) -> tuple[str, bool, str]:
    """The no-regression rule: (outcome, forced, reason)."""
    new = f"version {candidate.version}"
    if champion is None:
        return "promoted", False, f"Promoted {new} as the first champion ({metric} = {candidate_value:.4f})."
    if str(champion.version) == str(candidate.version):
        return "unchanged", False, f"{new.capitalize()} is already the champion; nothing changed."
    old = f"champion version {champion.version}"
    refusal = _refusal(candidate, champion, metric, candidate_value, champion_value)
    if refusal is None:
        return "promoted", False, (f"Promoted {new}: it beats {old} on {metric} "
                                   f"({candidate_value:.4f} > {champion_value:.4f}) on the same test data.")
    if force:
        return "promoted", True, (f"Forced by {_user()}: promoted {new} over {old} although the rule refused "
                                  f"({refusal}).")
    return "refused", False, f"Refused {new}: {refusal}; {old} stays (force=True overrides)."


def _refusal(candidate: ModelVersion, champion: ModelVersion, metric: str, candidate_value: float,
             champion_value: float | None) -> str | None:
    """Why the rule refuses the candidate, or None when it wins."""
    candidate_data, champion_data = _fingerprint(candidate), _fingerprint(champion)
    if not candidate_data or not champion_data:
        return "a version without a 'data.fingerprint' tag cannot be compared on the same test data"
    if candidate_data != champion_data:
        return (f"it was tested on data fingerprint '{candidate_data}' but the champion on '{champion_data}', "
                f"so {metric} {candidate_value:.4f} vs {_number(champion_value)} is not comparable")
    if champion_value is None:
        return f"the champion has no {metric} to compare with"
    if candidate_value > champion_value:
        return None
    relation = "ties" if candidate_value == champion_value else "is below"
    return f"its {metric} {candidate_value:.4f} {relation} the champion's {champion_value:.4f}"


def _move_champion(client: MlflowClient, name: str, candidate: ModelVersion, champion: ModelVersion | None) -> None:
    """`previous` -> the old champion, then `champion` -> the candidate."""
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, champion.version)
        client.set_model_version_tag(name, champion.version, "promotion.replaced_by", str(candidate.version))
        client.set_model_version_tag(name, champion.version, "promotion.replaced_at", _now())
    client.set_registered_model_alias(name, CHAMPION, candidate.version)


def _record_decision(client: MlflowClient, decision: PromotionDecision, note: str) -> None:
    """Writes the decision as `promotion.*` tags on the candidate, plus a one-line history entry."""
    name, version = decision.registered_model, decision.candidate_version
    tags = {
        "promotion.decision": decision.outcome,
        "promotion.metric": decision.metric,
        "promotion.candidate_value": _number(decision.candidate_value),
        "promotion.champion_value": _number(decision.champion_value),
        "promotion.compared_to": decision.champion_before or "none",
        "promotion.forced": str(decision.forced).lower(),
        "promotion.reason": _clip(decision.reason),
        "promotion.decided_at": _now(),
        "promotion.decided_by": _user(),
        "promotion.note": _clip(note),
    }
    if decision.paired is not None:
        paired = decision.paired
        tags.update({"promotion.paired_difference": _number(paired.difference),
                     "promotion.paired_ci_low": _number(paired.ci_low),
                     "promotion.paired_ci_high": _number(paired.ci_high),
                     "promotion.paired_confidence": _number(paired.confidence),
                     "promotion.paired_cases": str(paired.cases),
                     "promotion.paired_significant": str(paired.significant).lower()})
    if decision.forced:
        tags["promotion.forced_by"] = tags["promotion.decided_by"]
        tags["promotion.forced_at"] = tags["promotion.decided_at"]
    current = client.get_model_version(name, version).tags.get("promotion.history", "")
    entry = f"{tags['promotion.decided_at']} {decision.outcome}: {decision.reason}"
    tags["promotion.history"] = _clip((current + "\n" + entry).strip(), keep="end")
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


# ---------------------------------------------------------------- rollback


def rollback(dataset: str, *, synthetic: bool, primary_metric: str = "accuracy", note: str = "") -> PromotionDecision:
    """Moves `champion` back to `previous`, and `previous` to the version it replaces (a swap).

    Args:
        dataset: The dataset whose registered model to act on.
        synthetic: Act on `<dataset>-classifier-demo` instead of the real model.
        primary_metric: Only reported: the values in the returned decision.
        note: Why (kept in `promotion.note` on the restored version).

    Raises:
        MedxpError: no such registered model, or no `previous` alias to go back to.
    """
    client = MlflowClient()
    name = registered_model_name(dataset, synthetic)
    registered = _get_registered_model(client, name)
    restored = _alias_target(client, registered, PREVIOUS)
    if restored is None:
        raise MedxpError(f"{name}: no '{PREVIOUS}' alias; expected an earlier promotion to roll back to")
    champion = _alias_target(client, registered, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, restored.version)
    if champion is not None and str(champion.version) != str(restored.version):
        client.set_registered_model_alias(name, PREVIOUS, champion.version)
    metric, restored_version = f"test_{primary_metric}", str(restored.version)
    before = str(champion.version) if champion else None
    reason = f"Rolled back by {_user()}: champion moved from version {before} to previous version {restored_version}."
    decision = PromotionDecision(name, "rolled_back", True, restored_version, before, restored_version, metric,
                                 _version_metric(client, restored, metric),
                                 _version_metric(client, champion, metric) if champion else None, False, reason)
    _record_decision(client, decision, note)
    return decision


# ---------------------------------------------------------------- registry look-ups


def _get_registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        raise MedxpError(f"registered model '{name}' does not exist; expected a registered run first "
                         f"(registered models: {known})") from None


def _candidate_version(client: MlflowClient, name: str, version: str | int | None) -> ModelVersion:
    """The given version, or the latest one."""
    numbers = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    if not numbers:
        raise MedxpError(f"registered model '{name}' has no versions; expected a registered run first")
    if version is None:
        return client.get_model_version(name, str(numbers[-1]))
    if str(version).strip().isdigit() and int(version) in numbers:
        return client.get_model_version(name, str(int(version)))
    raise MedxpError(f"version '{version}' of '{name}': expected one of {', '.join(map(str, numbers))}")


def _alias_target(client: MlflowClient, registered: RegisteredModel, alias: str) -> ModelVersion | None:
    version = registered.aliases.get(alias)
    return client.get_model_version(registered.name, version) if version else None


def _version_metric(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """The version's `metric.<metric>` tag, else its source run's metric, else None."""
    try:
        return float(version.tags[f"metric.{metric}"])
    except (KeyError, ValueError):
        pass
    if version.run_id:
        try:
            return client.get_run(version.run_id).data.metrics.get(metric)
        except MlflowException:
            return None
    return None


def _fingerprint(version: ModelVersion) -> str:
    """The test data the version was scored on; "" when it was registered without one."""
    return version.tags.get("data.fingerprint", "")


def _number(value: Any) -> str:
    return "none" if value is None else f"{value:.6g}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def _clip(text: str, keep: str = "start") -> str:
    """Fits `text` in a registry text column, keeping its start (or its end, for logs)."""
    if len(text) <= _MAX_TEXT:
        return text
    return text[: _MAX_TEXT - 3] + "..." if keep == "start" else "..." + text[-(_MAX_TEXT - 3):]
