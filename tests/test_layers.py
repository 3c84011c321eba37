"""The layer order of the package (docs/architecture.md), checked by import-linter's contract in pyproject.toml."""
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import prunekit

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the ``prunekit`` found in ``package_parent``, with the project's contract."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(PYPROJECT)!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=package_parent, capture_output=True, text=True,
                          env={"PYTHONPATH": str(package_parent), "PATH": ""})


def test_no_module_imports_from_a_floor_above_its_own():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "prunekit floors KEPT" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "prunekit", tmp_path / "prunekit", ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "prunekit" / "sparsity" / "units.py", "a") as f:
        f.write("\nfrom ..report import tables  # noqa: E402\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "prunekit.sparsity.units -> prunekit.report.tables" in result.stdout


def test_every_module_of_the_package_is_on_a_floor():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    (contract,) = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    on_floors = {name.strip() for floor in contract["layers"] for name in floor.split("|")}
    modules = {m.name for m in pkgutil.iter_modules(prunekit.__path__)} - {"__main__"}
    assert modules == on_floors
