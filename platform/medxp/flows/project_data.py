"""The data verbs: `medxp audit` (class balance, sizes, unreadable files, duplicates, leakage) and `medxp download`.

Also whether a project's data is generated demo data, which decides its registered model's
name (`<dataset>-classifier-demo`) for `medxp promote` and the default champion URI.
"""

from __future__ import annotations

import json
from pathlib import Path

from medxp.config import ExperimentConfig, resolve_data_dir
from medxp.data.audit import AuditReport, log_audit
from medxp.data.datamodule import audit_data, ensure_data
from medxp.data.download import download_project
from medxp.data.synthetic import is_generated
from medxp.tracking.base import Tracker


def audit_project(config: ExperimentConfig, tracker: Tracker) -> AuditReport:
    """Audits the project's data as a run would read it and logs the report on `tracker`'s run.

    The run is tagged `data.synthetic` and `data.dir` before the scan, so a failed audit still
    says what data it read.
    """
    root = ensure_data(config)
    tracker.set_tags({"data.synthetic": str(is_generated(root)).lower(), "data.dir": str(root)})
    report = audit_data(config)
    log_audit(report, tracker)
    return report


def write_audit_report(report: AuditReport, output: Path) -> Path:
    """Writes `report.html` and `report.json` into `output` (created); returns the HTML file's path."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.html").write_text(report.to_html())
    (output / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    return output / "report.html"


def download(project: str, target: str | None = None, *, force: bool = False) -> Path:
    """Fetches a project's data (MedMNIST; Kaggle with credentials) into `target` (default: its data_dir)."""
    return download_project(project, target, force=force)


def uses_generated_data(config: ExperimentConfig) -> bool:
    """Whether the project's data folder holds generated demo data (then models are `-demo`).

    A folder not made yet counts as generated when the project has a demo generator and
    `data.demo` allows it, since the first run will generate it.
    """
    root = resolve_data_dir(config)
    if not root.exists():
        return config.data.demo != "never" and bool(config.dataset.demo)
    return is_generated(root)
