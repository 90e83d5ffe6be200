"""`medxp <verb>`: parse, load the project config, call the pipeline. Thin by design."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Sequence

from medxp.errors import MedxpError

log = logging.getLogger("medxp")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `medxp` console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow.store", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from medxp.console import quiet_library_bars

    quiet_library_bars()
    try:
        args.handler(args)
    except MedxpError as error:
        print(f"medxp: error: {error}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medxp", description="medxp: medical imaging experiments tracked in MLflow")
    verbs = parser.add_subparsers(dest="verb", required=True)
    main_verb = verbs.add_parser("main", help="search, evaluate the best model, explain it with LIME, register it")
    _add_config_arguments(main_verb)
    _add_search_arguments(main_verb)
    main_verb.add_argument("--explain-samples", type=int, default=1000, help="LIME perturbations per image")
    main_verb.set_defaults(handler=_main)
    train = verbs.add_parser("train", help="train and evaluate one configuration")
    _add_config_arguments(train)
    train.set_defaults(handler=_train)
    search = verbs.add_parser("search", help="hyper-parameter search (Optuna on Ray Tune), one MLflow run per trial")
    _add_config_arguments(search)
    _add_search_arguments(search)
    search.set_defaults(handler=_search)
    evaluate = verbs.add_parser("evaluate", help="evaluate a logged or registered model on a dataset's test split")
    _add_config_arguments(evaluate)
    _add_model_uri_argument(evaluate)
    evaluate.add_argument("--split", default="test", choices=("valid", "test"))
    evaluate.set_defaults(handler=_evaluate)
    explain = verbs.add_parser("explain", help="LIME explanations of a logged or registered model")
    _add_config_arguments(explain)
    _add_model_uri_argument(explain)
    explain.add_argument("--per-class", type=int, default=2, help="images per class to explain")
    explain.add_argument("--samples", type=int, default=1000, help="LIME perturbations per image")
    explain.set_defaults(handler=_explain)
    predict = verbs.add_parser("predict", help="score image files and folders with a registered model, into a CSV")
    _add_config_arguments(predict)
    _add_model_uri_argument(predict)
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files (PNG, JPEG, DICOM, ...) or folders")
    predict.add_argument("--output", default="predictions.csv", help="the CSV to write (default: predictions.csv)")
    predict.add_argument("--explain", action="store_true", help="also a LIME PNG per image, beside the CSV")
    predict.add_argument("--samples", type=int, default=1000, help="LIME perturbations per image (--explain)")
    predict.set_defaults(handler=_predict)
    promote = verbs.add_parser("promote", help="move the registry alias 'champion' to a better version")
    _add_config_arguments(promote)
    promote.add_argument("--version", default="", help="candidate version (default: the latest)")
    promote.add_argument("--force", nargs="?", const="true", default="false", choices=("true", "false"),
                         help="promote even if not better (recorded on the version)")
    promote.add_argument("--note", default="", help="why, recorded on the version")
    promote.set_defaults(handler=_promote)
    rollback = verbs.add_parser("rollback", help="move 'champion' back to the version it replaced ('previous')")
    _add_config_arguments(rollback)
    rollback.add_argument("--note", default="", help="why, recorded on the restored version")
    rollback.set_defaults(handler=_rollback)
    dashboard = verbs.add_parser("dashboard", help="optuna-dashboard on the project's study storage (live search view)")
    _add_config_arguments(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.set_defaults(handler=_dashboard)
    series = verbs.add_parser("series", help="a ladder of variants (projects/<dataset>/series/<name>.yaml), nested "
                              "runs under one parent and one comparison table")
    _add_config_arguments(series, experiment=False)
    series.add_argument("--series", required=True, help="the series file's name, e.g. ablation")
    series.set_defaults(handler=_series)
    cv = verbs.add_parser("cv", help="k-fold cross-validation: one nested run per fold and a summary table")
    _add_config_arguments(cv)
    cv.set_defaults(handler=_cv)
    ensemble = verbs.add_parser("ensemble", help="average the probabilities of logged or registered models")
    _add_config_arguments(ensemble)
    ensemble.add_argument("--model-uris", required=True,
                          help="members, space-separated: models:/m-..., models:/<name>/<version>, models:/<name>@alias")
    ensemble.add_argument("--register", nargs="?", const="true", default="false", choices=("true", "false"),
                          help="register the ensemble as a new version of the dataset's model")
    ensemble.set_defaults(handler=_ensemble)
    audit = verbs.add_parser("audit", help="class balance, sizes, unreadable files, duplicates and leakage")
    _add_config_arguments(audit)
    audit.add_argument("--output", default="", help="folder for report.html and report.json (default: audit/<dataset>)")
    audit.set_defaults(handler=_audit)
    download = verbs.add_parser("download", help="fetch a project's data (MedMNIST; Kaggle with credentials)")
    download.add_argument("project", help="a folder under projects/ or a MedMNIST 2D flag, e.g. bloodmnist")
    download.add_argument("--target", default="", help="where to put it (default: the project's data_dir)")
    download.add_argument("--force", action="store_true", help="fetch again even if the data is there")
    download.set_defaults(handler=_download)
    listing = verbs.add_parser("list", help="list datasets and models")
    listing.set_defaults(handler=_list)
    return parser


def _add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="", help="search (Optuna study) name; an existing one is resumed")


def _add_model_uri_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-uri", default="",
                        help="models:/m-..., models:/<name>@champion (default: the dataset's champion)")


def _add_config_arguments(parser: argparse.ArgumentParser, experiment: bool = True) -> None:
    parser.add_argument("--dataset", required=True,
                        help="a folder under projects/ (e.g. glaucoma) or any MedMNIST 2D flag (e.g. bloodmnist)")
    if experiment:
        parser.add_argument("--experiment", default="",
                            help="a variant under projects/<dataset>/experiments/ (e.g. an ablation step)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (train.lr=0.01, or a short name: lr=0.01); empty values are ignored")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_config(args: argparse.Namespace):
    """The project's config with the command line's overrides applied."""
    from medxp.config import load_project

    return load_project(args.dataset, parse_overrides(args.overrides), args.experiment or None)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """`["lr=0.01", "model=", "a=1 b=2"]` -> `{"lr": "0.01", "a": "1", "b": "2"}` (empty values dropped).

    Items split on spaces (the MLproject's `overrides` is one string); a word that does not start
    with `KEY=` continues the value before it, so a value may hold spaces:
    `search.select=max val_f1_macro where infer_ms <= 20` is one override.
    """
    pairs: list[list[str]] = []
    for word in (part for chunk in items for part in chunk.split()):
        if _KEY_VALUE.match(word):
            pairs.append(word.split("=", 1))
        elif pairs:
            pairs[-1][1] = f"{pairs[-1][1]} {word}".strip()
        else:
            raise MedxpError(f"override '{word}': expected KEY=VALUE, e.g. train.lr=0.01")
    return {key: value for key, value in pairs if value != ""}


_KEY_VALUE = re.compile(r"^[A-Za-z_][\w.]*=")


def _train(args: argparse.Namespace) -> None:
    from medxp.pipeline import run_experiment
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"{config.dataset.name}-{config.model.name}") as tracker:
        result = run_experiment(config, tracker, progress=not args.no_progress)
    test = result.evaluations["test"].metrics
    print(f"run {tracker.run_id}: test accuracy {test['accuracy']:.4f}, roc_auc {test['roc_auc']:.4f} "
          f"({'SYNTHETIC demo data' if result.data.synthetic else result.data.root}); model {result.model_uri}")


def _main(args: argparse.Namespace) -> None:
    from medxp.flows.search_register import search_explain_register
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"main-{config.dataset.name}",
                             tags={"medxp.kind": "search"}) as tracker:
        result = search_explain_register(config, tracker, search_name=args.name or None,
                                         explain_samples=args.explain_samples,
                                         overrides=parse_overrides(args.overrides))
    search = result.search
    checks = ", ".join(f"{name} {value:.2f}" for name, value in sorted(result.explain_metrics.items()))
    checks = f"; explanation checks: {checks}" if checks else ""
    judged = "cv mean" if config.search.cv_folds else "val"
    print(f"search {search.study_name}: {search.state_counts}; best trial {search.best_trial_number} "
          f"({judged} {search.best_value:.4f}); test accuracy {result.test_metrics['accuracy']:.4f}"
          f"{' (refitted on train + valid)' if config.search.refit else ''}; registered "
          f"{result.registered_name} version {result.registered_version}{checks}. "
          f"Next: medxp promote --dataset {config.dataset.name}")


def _search(args: argparse.Namespace) -> None:
    from medxp.search import run_search
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"search-{config.dataset.name}",
                             tags={"medxp.kind": "search"}) as tracker:
        result = run_search(config, search_name=args.name or None, parent_tracker=tracker)
    print(f"search {result.study_name}: {result.state_counts}; best trial {result.best_trial_number} "
          f"value {result.best_value}; model {result.best_model_uri}")


def _evaluate(args: argparse.Namespace) -> None:
    from medxp.pipeline import evaluate_logged_model
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    model_uri = _model_uri(args, config)
    with MlflowTracker.start(config.dataset.name, run_name=f"evaluate-{config.dataset.name}") as tracker:
        evaluation = evaluate_logged_model(config, model_uri, tracker, split=args.split)
    print(f"{model_uri} on {args.split}:\n{evaluation.report}")


def _explain(args: argparse.Namespace) -> None:
    from medxp.flows.explain import explain_logged_model
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    model_uri = _model_uri(args, config)
    with MlflowTracker.start(config.dataset.name, run_name=f"explain-{config.dataset.name}") as tracker:
        summary = explain_logged_model(config, model_uri, tracker, per_class=args.per_class,
                                       num_samples=args.samples)
    print(f"explained {len(summary.records)} image/method pairs of {model_uri}: {', '.join(summary.artifacts)}")


def _cv(args: argparse.Namespace) -> None:
    from medxp.flows.cross_validation import run_cross_validation
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"cv-{config.dataset.name}",
                             tags={"medxp.kind": "cv"}) as tracker:
        result = run_cross_validation(config, tracker, progress=not args.no_progress)
    print(f"{len(result.folds)} folds ({result.source}), {result.finished} finished:\n{result.summary.to_string()}")


def _series(args: argparse.Namespace) -> None:
    from medxp.flows.series import SUMMARY_COLUMNS, markdown_table, run_series
    from medxp.tracking.mlflow_tracker import MlflowTracker

    with MlflowTracker.start(args.dataset, run_name=f"series-{args.series}",
                             tags={"medxp.kind": "series"}) as tracker:
        result = run_series(args.dataset, args.series, tracker, parse_overrides(args.overrides),
                            progress=not args.no_progress)
    print(f"series {args.series} of {args.dataset} (run {result.run_id}): "
          f"{result.count('FINISHED')} trained, {result.count('REUSED')} reused, {result.count('FAILED')} failed\n"
          f"{markdown_table(result.table, SUMMARY_COLUMNS)}")


def _ensemble(args: argparse.Namespace) -> None:
    from medxp.flows.ensemble import run_ensemble
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"ensemble-{config.dataset.name}",
                             tags={"medxp.kind": "ensemble"}) as tracker:
        result = run_ensemble(config, args.model_uris.split(), tracker, register=args.register == "true")
    test = result.evaluations["test"].metrics
    registered = f"; registered {result.registered_name} version {result.registered_version}" \
        if result.registered_version else ""
    print(f"ensemble of {len(args.model_uris.split())}: test accuracy {test['accuracy']:.4f}; model {result.model_uri}"
          f"{registered}")


def _audit(args: argparse.Namespace) -> None:
    from pathlib import Path

    from medxp.flows.project_data import audit_project, write_audit_report
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"audit-{config.dataset.name}",
                             tags={"medxp.kind": "audit", "dataset": config.dataset.name}) as tracker:
        report = audit_project(config, tracker)
    html = write_audit_report(report, Path(args.output or Path("audit") / config.dataset.name))
    print(report.summary_text())
    print(f"report: {html} (and in MLflow run {tracker.run_id})")


def _download(args: argparse.Namespace) -> None:
    from medxp.flows.project_data import download

    path = download(args.project, args.target or None, force=args.force)
    print(f"{args.project}: data in {path}")


def _promote(args: argparse.Namespace) -> None:
    from medxp.flows.promote import promote_and_record
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"promote-{config.dataset.name}",
                             tags={"medxp.kind": "promotion"}) as tracker:
        decision = promote_and_record(config, tracker, version=args.version or None, force=args.force == "true",
                                      note=args.note)
    print(decision.reason)


def _predict(args: argparse.Namespace) -> None:
    from medxp.flows.predict import predict_files

    config = load_config(args)
    model_uri = _model_uri(args, config)
    summary = predict_files(model_uri, args.paths, args.output, explain=args.explain, progress=not args.no_progress,
                            explain_samples=args.samples)
    print(f"{model_uri}: {summary.predicted} file(s) predicted, {len(summary.failed)} not readable -> {summary.output}")
    for path, reason in summary.failed:
        print(f"  not predicted: {path}: {reason}")
    if summary.explanations:
        print(f"LIME explanations: {summary.explanations[0].parent} ({len(summary.explanations)} PNG)")


def _rollback(args: argparse.Namespace) -> None:
    from medxp.flows.promote import rollback_and_record
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"rollback-{config.dataset.name}",
                             tags={"medxp.kind": "rollback"}) as tracker:
        decision = rollback_and_record(config, tracker, note=args.note)
    print(decision.reason)


def _dashboard(args: argparse.Namespace) -> None:
    from medxp.search.dashboard import dashboard_storage, serve_dashboard

    serve_dashboard(dashboard_storage(load_config(args)), host=args.host, port=args.port)


def _model_uri(args: argparse.Namespace, config) -> str:
    """The given --model-uri, else the dataset's champion (the -demo one for generated data)."""
    from medxp.promotion import champion_uri

    return args.model_uri or champion_uri(config.dataset.name, _synthetic(config))


def _synthetic(config) -> bool:
    """Whether the project's data folder holds generated demo data (then models are `-demo`)."""
    from medxp.flows.project_data import uses_generated_data

    return uses_generated_data(config)


def _list(args: argparse.Namespace) -> None:
    from medxp.config import experiment_names, generic_project_names, is_generic_project, project_names
    from medxp.models import model_names

    from medxp.series_files import series_names

    for name in project_names():
        experiments, series = experiment_names(name), series_names(name)
        print(f"dataset {name}" + (f" (experiments: {', '.join(experiments)})" if experiments else "")
              + (f" (series: {', '.join(series)})" if series else ""))
    generic = [name for name in generic_project_names() if is_generic_project(name)]
    if generic:
        print("MedMNIST 2D flags without a project folder (generic project from MedMNIST's metadata):",
              ", ".join(generic))
    print("models:", ", ".join(model_names()))


if __name__ == "__main__":
    sys.exit(main())
