"""The main flow's companion experiment (`search.ensemble_with`): K seeds of it, averaged with the search's model.

A search of a small model and a few trainings of another kind of model (an ImageNet backbone on the
same images, upsampled) make different mistakes; their mean is the classic cheap gain on a small
data set, where a search's ranking on a small validation split cannot tell its own configurations
apart. After the search has chosen its model (`medxp.flows.search_register.select_model`), the
main flow trains the project's experiment `search.ensemble_with` with seeds `train.seed`,
`train.seed + 1`, ... (`search.ensemble_with_seeds` of them), each a nested run `companion-<name>-seed<s>`
scored on the validation split only (on the very file the project reads: `same_source`), and averages
two halves that weigh equally: the search's model, and the mean of the companions. The result takes
the project's images; a companion trained at another size resizes them to its own
(`medxp.models.ensemble.Resized`).

Selection uses the validation split only, under the search's rule: with `search.ensemble_if_better`
(the default) the mean replaces the search's model only when it scores higher on valid; with
`false` it is registered whenever a companion finished. The parent run records both validation
values (`valid_<metric>_search_model`, `valid_<metric>_with_<name>`) and says what it chose in the
tag `medxp.selected`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import mlflow
from torch import nn

from medxp.config import ExperimentConfig, load_project, resolve_data_dir
from medxp.data import DataModule
from medxp.errors import MedxpError
from medxp.models.ensemble import EnsembleModel, MemberInfo, Resized
from medxp.tracking.mlflow_tracker import MlflowTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Companions:
    """The companion experiment's name and one config per seed, resolved before the search starts."""

    name: str
    configs: tuple[ExperimentConfig, ...]


def companion_configs(config: ExperimentConfig, overrides: Mapping[str, Any] | None) -> Companions | None:
    """The configs `search.ensemble_with` trains, or None when it is empty.

    The experiment is loaded as `medxp train --experiment <name>` loads it, with the main command's
    overrides; its seeds follow the main config's `train.seed`. Called before the search, so an unknown
    experiment or a bad override fails before anything trains.

    Raises:
        MedxpError: an unknown experiment (naming the project's), a bad config, or a companion that would
            not fit the project's images (other classes or channels).
    """
    name = config.search.ensemble_with
    if not name:
        return None
    loaded = load_project(config.dataset.name, dict(overrides or {}), name)
    if (loaded.dataset.class_names, loaded.dataset.channels) != (config.dataset.class_names, config.dataset.channels):
        raise MedxpError(f"search.ensemble_with: experiment '{name}' trains on classes "
                         f"{list(loaded.dataset.class_names)} with {loaded.dataset.channels} channel(s); expected the "
                         f"project's {list(config.dataset.class_names)} with {config.dataset.channels}")
    seeds = range(config.train.seed, config.train.seed + config.search.ensemble_with_seeds)
    return Companions(name, tuple(loaded.replace({"train.seed": seed}, f"search.ensemble_with seed {seed}")
                                  for seed in seeds))


def same_source(companion: ExperimentConfig, project: ExperimentConfig) -> ExperimentConfig:
    """The companion reading the project's own file: MedMNIST publishes a file per size (`<flag>_64.npz`), and a
    companion at 64 px trained on that one would be fed the project's 28 px images upsampled at inference."""
    if companion.dataset.layout != "medmnist" or companion.dataset.image_size == project.dataset.image_size:
        return companion
    from medxp.data.medmnist import find_npz

    path = find_npz(resolve_data_dir(project), project.dataset.source_id or project.dataset.name,
                    project.dataset.image_size)
    return companion.replace({"data.data_dir": str(path)}, "search.ensemble_with: the project's file")


def add_companions(companions: Companions, model: nn.Module, model_uri: str, chosen: str, data: DataModule,
                   best: ExperimentConfig, tracker: MlflowTracker) -> tuple[nn.Module, str]:
    """Trains the companions and returns the model to register: the mean with the search's, or the search's alone.

    Args:
        companions: From `companion_configs`.
        model, model_uri: The model the search chose (a trial's, or the mean of the best few) and its URI.
        chosen: What `model` is, for the record (`trial 5`, `the ensemble of trials 5, 2, 9`).
        data: The project's splits, as the search's model takes them.
        best: The best trial's config (its evaluation settings judge the mean).
        tracker: The main flow's run; the companions run nested under it.

    A companion that fails is logged and left out (its run keeps the error); when none finished, the
    search's model is returned and the tag `medxp.selected` says why.
    """
    from medxp.flows.ensemble import evaluate_ensemble, fit_ensemble_rule, log_ensemble
    from medxp.models.loading import load_inference_model
    from medxp.pipeline import evaluate_inference_model, example_batch, run_experiment
    from medxp.search.report import single_metric

    tracker.check_active("search.ensemble_with")
    experiment = mlflow.get_experiment(mlflow.active_run().info.experiment_id).name
    input_shape = tuple(int(size) for size in data.datasets["valid"].images.shape[1:])
    members, infos, seeds, failures = [], [], [], []
    for index, config in enumerate(companions.configs, start=1):
        label = f"companion-{companions.name}-seed{config.train.seed}"
        log.info("search.ensemble_with: training %s (%d/%d)%s", label, index, len(companions.configs),
                 " on GENERATED demo data" if data.synthetic else "")
        config = same_source(config, best)
        try:
            with MlflowTracker.start(experiment, run_name=label, nested=True,
                                     tags={"medxp.kind": "companion", "companion.experiment": companions.name}) as run:
                result = run_experiment(config, run, splits=("valid",))  # the test split is scored once, on the mean
            if result.data.fingerprint != data.fingerprint:
                raise MedxpError(f"{label} trained on data with fingerprint {result.data.fingerprint}; expected the "
                                 f"project's data ({data.fingerprint}): the same images at another size")
            member = load_inference_model(result.model_uri)
            if tuple(getattr(member, "input_shape", ()) or ()) != input_shape:
                member = Resized(member, input_shape)
        except Exception as error:  # one companion's failure keeps the others and the search's model; its run has it
            log.exception("search.ensemble_with: %s failed", label)
            failures.append(f"{label}: {str(error)[:200]}")
            continue
        members.append(member.eval())
        seeds.append(config.train.seed)
        infos.append(MemberInfo(f"{label} ({result.model_uri})", tuple(data.class_names), input_shape))
    if not members:
        tracker.set_tags({"medxp.selected": f"{chosen} (no {companions.name} companion finished: "
                                            f"{'; '.join(failures)[:2000]})"})
        return model, model_uri
    group = members[0] if len(members) == 1 else EnsembleModel(members, infos).eval()
    group_info = infos[0] if len(members) == 1 else MemberInfo(
        f"the mean of {len(members)} {companions.name} models", tuple(data.class_names), input_shape)
    mean = fit_ensemble_rule(EnsembleModel(
        [model, group], [MemberInfo(f"{chosen} ({model_uri})", tuple(data.class_names), input_shape), group_info]),
        data, best)
    metric = single_metric(best)
    search_value = evaluate_inference_model(model, data, "valid", best).metrics[metric]
    mean_value = evaluate_ensemble(mean, data, "valid", best).metrics[metric]
    tracker.log_metrics({f"valid_{metric}_search_model": float(search_value),
                         f"valid_{metric}_with_{companions.name}": float(mean_value)})
    what = f"{chosen} averaged with {len(members)} {companions.name} model(s) (seeds " \
           f"{', '.join(map(str, seeds))})"  # the seeds that finished
    relation = ">" if mean_value > search_value else "<" if mean_value < search_value else "="
    if not mean_value > search_value and best.search.ensemble_if_better:
        tracker.set_tags({"medxp.selected": f"{chosen}: val {metric} {search_value:.4f}, {what} "
                                            f"{mean_value:.4f}"})
        log.info("search.ensemble_with: %s scores val %s %.4f %s %.4f (%s alone): keeping %s", what, metric,
                 mean_value, relation, search_value, chosen, chosen)
        return model, model_uri
    rule = "" if best.search.ensemble_if_better else "; search.ensemble_if_better is false: the mean is registered"
    log.info("search.ensemble_with: %s scores val %s %.4f %s %.4f (%s alone): registering the mean%s", what,
             metric, mean_value, relation, search_value, chosen, rule)
    tracker.set_tags({"medxp.selected": f"{what}: val {metric} {mean_value:.4f} {relation} {search_value:.4f} "
                                        f"({chosen} alone){rule}", "model": "ensemble"})
    return mean, log_ensemble(mean, tracker, example_batch(data))
