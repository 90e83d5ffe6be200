"""`medxp <verb>`: parse, load the project config, call the pipeline. Thin by design."""

from __future__ import annotations

import argparse
import logging
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
    try:
        args.handler(args)
    except MedxpError as error:
        print(f"medxp: error: {error}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medxp", description="medxp: medical imaging experiments tracked in MLflow")
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb, help_text in (("train", "train and evaluate one configuration"),
                            ("main", "the default MLproject entry point (train + evaluate)")):
        sub = verbs.add_parser(verb, help=help_text)
        _add_config_arguments(sub)
        sub.set_defaults(handler=_train)
    evaluate = verbs.add_parser("evaluate", help="evaluate a logged or registered model on a dataset's test split")
    _add_config_arguments(evaluate)
    evaluate.add_argument("--model-uri", required=True, help="models:/m-..., models:/<name>@champion, runs:/...")
    evaluate.add_argument("--split", default="test", choices=("valid", "test"))
    evaluate.set_defaults(handler=_evaluate)
    listing = verbs.add_parser("list", help="list datasets and models")
    listing.set_defaults(handler=_list)
    return parser


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="a folder under projects/, e.g. glaucoma")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (train.lr=0.01, or a short name: lr=0.01); empty values are ignored")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_config(args: argparse.Namespace):
    """The project's config with the command line's overrides applied."""
    from medxp.config import load_project

    return load_project(args.dataset, parse_overrides(args.overrides))


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """`["lr=0.01", "model=", "a=1 b=2"]` -> `{"lr": "0.01", "a": "1", "b": "2"}` (empty values dropped)."""
    overrides: dict[str, str] = {}
    for item in (part for chunk in items for part in chunk.split()):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MedxpError(f"override '{item}': expected KEY=VALUE, e.g. train.lr=0.01")
        if value != "":
            overrides[key] = value
    return overrides


def _train(args: argparse.Namespace) -> None:
    from medxp.pipeline import run_experiment
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"{config.dataset.name}-{config.model.name}") as tracker:
        result = run_experiment(config, tracker, progress=not args.no_progress)
    test = result.evaluations["test"].metrics
    print(f"run {tracker.run_id}: test accuracy {test['accuracy']:.4f}, roc_auc {test['roc_auc']:.4f} "
          f"({'SYNTHETIC demo data' if result.data.synthetic else result.data.root}); model {result.model_uri}")


def _evaluate(args: argparse.Namespace) -> None:
    from medxp.pipeline import evaluate_logged_model
    from medxp.tracking.mlflow_tracker import MlflowTracker

    config = load_config(args)
    with MlflowTracker.start(config.dataset.name, run_name=f"evaluate-{config.dataset.name}") as tracker:
        evaluation = evaluate_logged_model(config, args.model_uri, tracker, split=args.split)
    print(evaluation.report)


def _list(args: argparse.Namespace) -> None:
    from medxp.config import project_names
    from medxp.models import model_names

    print("datasets:", ", ".join(project_names()))
    print("models:  ", ", ".join(model_names()))


if __name__ == "__main__":
    sys.exit(main())
