"""Quality on real data: each project's default `main` flow, end to end, beside the published results.

For each real data set found in `--data-dir` (default `../shared/data` beside the checkout:
PneumoniaMNIST, BreastMNIST, RetinaMNIST, fetal health) this runs what a researcher runs,
`medxp main --dataset D --set data_dir=...` (search -> best trial's model -> test split, touched
once, -> LIME -> registry), in its own process against a fresh MLflow store, then reads the main
run back from MLflow and prints test accuracy and ROC AUC with their 95% bootstrap CIs, macro F1,
the positive class and threshold where there is one, trials, and wall time, beside the anchors.

    python bench/quality.py                          # all four, the projects' own budgets
    python bench/quality.py --dataset breastmnist    # one
    python bench/quality.py --budget 0.5             # half the trials of each project's search

Writes bench/results/quality.json (one entry per data set run; earlier entries of data sets not run
this time are kept). Accuracy is arg-max accuracy on the official test split (fetal health: the
project's stratified 20% test split); for binary tasks the table adds sensitivity / specificity at the operating
threshold chosen on validation (Youden): sensitivity and specificity of the positive class there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# Published results on the same test splits (MedMNIST v2, Yang et al., Scientific Data 2023, Table:
# test ACC / AUC) and the figures of ../shared/data/README.md; `goal` is what the default must reach.
DATASETS = {
    "pneumoniamnist": {"file": "pneumoniamnist.npz", "goal": {"accuracy": 0.90, "roc_auc": 0.96},
                       "anchors": {"ResNet-18 (28)": (0.854, 0.944), "ResNet-50 (224)": (0.884, 0.962),
                                   "AutoML Vision": (0.946, 0.991)}},
    "breastmnist": {"file": "breastmnist.npz", "goal": {"accuracy": 0.88, "roc_auc": 0.92},
                    "anchors": {"ResNet-18 (28)": (0.863, 0.901), "AutoML Vision": (0.861, 0.919)}},
    "retinamnist": {"file": "retinamnist.npz", "goal": {"accuracy": 0.55},
                    "anchors": {"ResNet-18 (28)": (0.524, 0.717), "AutoML Vision": (0.531, 0.750)}},
    "fetal_health": {"file": "fetal_health.csv", "goal": {"accuracy": 0.95, "f1_macro": 0.90},
                     "anchors": {"HistGradientBoosting defaults, 5x 80/20 (acc, macro F1)": (0.954, 0.925),
                                 "the study's MLP (validation acc)": (0.939, None)}},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", choices=sorted(DATASETS),
                        help="run only this data set (repeatable); default: every one found")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                        help="folder holding the .npz / .csv files (default: ../shared/data)")
    parser.add_argument("--budget", type=float, default=1.0,
                        help="scale each project's search.n_trials (rounded, at least 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every data set (e.g. search.max_concurrent=2)")
    parser.add_argument("--workdir", default="", help="MLflow store, Optuna studies, caches (default: a temp folder)")
    return parser.parse_args()


def run_main(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """`medxp main` on one data set in its own process; its main run's figures read back from MLflow."""
    from medxp.config import load_project

    project = load_project(name)
    n_trials = max(2, round(project.search.n_trials * args.budget))
    store = workdir / name
    store.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
           "MEDXP_CACHE_DIR": str(store / "cache"), "MEDXP_SEARCH_STORAGE": f"sqlite:///{store / 'optuna.db'}"}
    command = [sys.executable, "-m", "medxp.cli", "main", "--dataset", name, "--set", f"data_dir={args.data_dir}",
               "--set", f"search.n_trials={n_trials}", "--name", f"quality-{name}-{int(time.time())}"]
    for override in args.set:
        command += ["--set", override]
    print(f"\n== {name}: {' '.join(command[2:])}", flush=True)
    started = time.monotonic()
    log = store / "main.log"
    with log.open("w") as out:
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.monotonic() - started
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        print("\n".join(tail))
        return {"dataset": name, "error": f"medxp main exited {code}; log {log}", "wall_s": wall}
    return {"dataset": name, "wall_s": wall, "n_trials_asked": n_trials, **read_main_run(name, env, project.eval.primary_metric)}


def read_main_run(name: str, env: dict, primary: str) -> dict:
    """The main run of `name`'s experiment: test metrics, CIs, decision rule, trials, registered version."""
    from mlflow.tracking import MlflowClient

    from medxp.search.trial import STATE_TAG

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=5000)
    main = next(run for run in runs if run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
                and "test_accuracy" in run.data.metrics)
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == main.info.run_id]
    metrics, tags = main.data.metrics, main.data.tags
    best = next((run for run in children if run.info.run_id == tags.get("best_run_id")), None)
    picked = {key: metrics.get(f"test_{key}") for key in ("accuracy", "roc_auc", "f1_macro", "op_sensitivity",
                                                          "op_specificity")}
    intervals = {key: (metrics.get(f"test_{key}_ci_low"), metrics.get(f"test_{key}_ci_high"))
                 for key in ("accuracy", "roc_auc", "f1_macro")}
    return {"test": picked, "ci95": intervals, "positive_class": tags.get("eval.positive_class"),
            "threshold": metrics.get("operating_threshold"), "threshold_split": tags.get("eval.threshold_split"),
"trials": len(children),
            "trial_states": {state: sum(run.data.tags.get(STATE_TAG) == state for run in children)
                             for state in {run.data.tags.get(STATE_TAG) for run in children}},
            "best_trial": tags.get("best_trial"), "best_params": best.data.params if best else {},
            "primary_metric": primary, "best_val": best.data.metrics.get(f"valid_{primary}") if best else None,
            "run_id": main.info.run_id}


def goal_check(name: str, result: dict) -> dict[str, bool]:
    return {metric: (result["test"].get(metric) or 0.0) >= floor for metric, floor in DATASETS[name]["goal"].items()}


def fmt(value: float | None, interval: tuple | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}"
    if interval and interval[0] is not None:
        text += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return text


def decision_rule(result: dict) -> str:
    """`positive / threshold (split)`, `positive / arg-max`, or `none (multi-class, arg-max)`."""
    positive = result.get("positive_class") or "none (multi-class)"
    if result.get("threshold") is not None:
        return f"{positive} / {result['threshold']:.3f} ({result['threshold_split']})"
    return "none (multi-class, arg-max)" if positive.startswith("none") else f"{positive} / arg-max"


def print_table(results: list[dict]) -> None:
    print(f"\n{'data set':<15} {'test acc [95% CI]':<22} {'test AUC [95% CI]':<22} {'macro F1':>8} "
          f"{'sens/spec at threshold':<23} {'positive / threshold':<26} {'trials':>6} {'wall':>7}  goal")
    for result in results:
        name = result["dataset"]
        if "error" in result:
            print(f"{name:<15} {result['error']}")
            continue
        test, ci = result["test"], result["ci95"]
        rule = decision_rule(result)
        sens_spec = (f"{test['op_sensitivity']:.3f} / {test['op_specificity']:.3f}"
                     if test.get("op_sensitivity") is not None else "-")
        goals = ", ".join(f"{metric} {'met' if met else 'MISSED'}" for metric, met in result["goals"].items())
        print(f"{name:<15} {fmt(test['accuracy'], ci['accuracy']):<22} {fmt(test['roc_auc'], ci['roc_auc']):<22} "
              f"{fmt(test['f1_macro']):>8} {sens_spec:<23} {rule:<26} {result['trials']:>6} "
              f"{result['wall_s'] / 60:>5.1f}m  {goals}")
        for anchor, (first, second) in DATASETS[name]["anchors"].items():
            print(f"{'':<15}   {anchor}: {first:.3f}" + (f" / {second:.3f}" if second is not None else ""))


def main() -> None:
    args = parse_args()
    data_dir = Path(args.data_dir)
    names = args.dataset or [name for name, spec in DATASETS.items() if (data_dir / spec["file"]).is_file()]
    missing = [name for name in names if not (data_dir / DATASETS[name]["file"]).is_file()]
    if missing or not names:
        print(f"{data_dir}: no {', '.join(DATASETS[n]['file'] for n in missing or DATASETS)}; nothing to measure "
              f"(pass --data-dir pointing at the real files)")
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medxp-quality-"))
    results = []
    for name in names:
        result = run_main(name, args, workdir)
        if "error" not in result:
            result["goals"] = goal_check(name, result)
        result["budget"], result["overrides"] = args.budget, args.set
        results.append(result)
        print_table([result])
    print_table(results)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "quality.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    saved.update({result["dataset"]: result for result in results})
    out.write_text(json.dumps(saved, indent=2, default=str))
    print(f"\nwrote {out} (workdir {workdir})")


if __name__ == "__main__":
    main()
