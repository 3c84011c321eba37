"""docs/reliability.md lists exactly the tests that record its rows (regenerate it with
``python tools/reliability_table.py`` after adding or renaming one)."""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

from tests.reliability import AREAS

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("reliability_table", REPO / "tools" / "reliability_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recording_tests(path: Path) -> set[str]:
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            calls = [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)]
            if any(c.func.id == "record" for c in calls):
                out.add(f"{path.relative_to(REPO)}::{node.name}")
    return out


def test_doc_rows_match_the_recording_tests():
    tool = _tool()
    recording = set().union(*(_recording_tests(REPO / f) for f in tool.TEST_FILES))
    text = tool.DOC.read_text()
    listed = {re.sub(r"\[.*\]$", "", m) for m in re.findall(r"\| `(tests/[^`]+)` \|$", text, flags=re.M)}
    assert recording, "no test records a row"
    assert listed == recording, f"missing from the doc: {sorted(recording - listed)}; stale: {sorted(listed - recording)}"
    assert all(f"## {title}" in text for title in AREAS.values())


def test_render_escapes_and_groups_rows():
    tool = _tool()
    text = tool.render([{"area": "fault", "tried": "a | b", "happened": "x", "test": "t::f"},
                        {"area": "config", "tried": "c", "happened": "y", "test": "t::g"}])
    body = text[len(tool.HEADER):]
    assert body.index(AREAS["config"]) < body.index(AREAS["fault"])
    assert "| a \\| b | x | `t::f` |" in body and AREAS["data"] not in body
