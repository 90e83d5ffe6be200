"""ARCHITECTURE.md describes every module of the library and nothing that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "platform" / "medxp"


def documented_modules() -> set[str]:
    """Module paths (relative to platform/medxp) in the first column of the doc's module table."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    return set(re.findall(r"^\| `([\w/]+\.py)` \|", text, flags=re.MULTILINE))


def existing_modules() -> set[str]:
    """Every module of the library, package faces of sub-packages without code of their own left out."""
    modules = {path.relative_to(LIBRARY).as_posix() for path in LIBRARY.rglob("*.py")}
    faces = {"__init__.py", "flows/__init__.py", "search/__init__.py", "explain/__init__.py",
             "tracking/__init__.py", "training/__init__.py"}
    return modules - faces


def test_every_module_is_in_the_map_and_the_map_names_no_missing_module():
    documented, existing = documented_modules(), existing_modules()
    assert documented, "ARCHITECTURE.md: no module table found"
    assert sorted(existing - documented) == [], "modules missing from ARCHITECTURE.md"
    assert sorted(documented - existing) == [], "ARCHITECTURE.md names modules that do not exist"


def test_readme_points_at_the_projects_own_map():
    readme = (REPO / "README.md").read_text()
    assert "ARCHITECTURE.md" in readme and "../shared" not in readme
