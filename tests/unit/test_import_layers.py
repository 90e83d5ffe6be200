"""The layers medxp's modules keep: read from their import statements, so a new import that breaks one fails here."""

from __future__ import annotations

import ast

import pytest

from medxp.errors import MedxpError
from medxp.tracking.mlflow_tracker import MlflowTracker
from tests.conftest import REPO

PACKAGE = REPO / "platform" / "medxp"


def _module_name(path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path) -> set[str]:
    """Every medxp module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medxp"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("medxp"))
    return found


IMPORTS = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_nothing_below_a_flow_imports_a_flow():
    offenders = {module: sorted(m for m in imported if _under(m, "medxp.flows"))
                 for module, imported in IMPORTS.items()
                 if not _under(module, "medxp.flows") and module != "medxp.cli"}
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_cli_reaches_neither_data_nor_training():
    assert sorted(m for m in IMPORTS["medxp.cli"] if _under(m, "medxp.data") or _under(m, "medxp.training")) == []


def test_tracking_knows_no_training_types():
    offenders = {module: sorted(m for m in imported if _under(m, "medxp.training"))
                 for module, imported in IMPORTS.items() if _under(module, "medxp.tracking")}
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_models_load_without_the_flows_or_the_pipeline():
    for module, imported in IMPORTS.items():
        if _under(module, "medxp.models"):
            assert not [m for m in imported if _under(m, "medxp.pipeline") or _under(m, "medxp.flows")], module


def test_the_data_registers_its_explanation_checks_without_importing_the_explainer():
    offenders = {module: sorted(m for m in imported if _under(m, "medxp.explain"))
                 for module, imported in IMPORTS.items() if _under(module, "medxp.data")}
    assert {module: names for module, names in offenders.items() if names} == {}
    assert "medxp.explanation_checks" in IMPORTS["medxp.data.synthetic"]


def test_the_explainer_imports_no_demo_generator():
    offenders = {module: sorted(m for m in imported if _under(m, "medxp.data.synthetic"))
                 for module, imported in IMPORTS.items() if _under(module, "medxp.explain")}
    assert {module: names for module, names in offenders.items() if names} == {}


def test_check_active_names_the_work_when_its_run_is_not_the_active_one(mlflow_store):
    with MlflowTracker.start("layers", run_name="parent") as tracker:
        tracker.check_active("cross-validation")  # inside its own run: nothing to refuse
    with pytest.raises(MedxpError, match=rf"^ensemble: tracker run {tracker.run_id} is not the active MLflow run"):
        tracker.check_active("ensemble")
