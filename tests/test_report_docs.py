"""Documented result tables agree with the code. Every result table in ``docs/`` carries a marker line

    <!-- table: commit=<sha>; command=<what produced it>; check=<recipe> <key=value ...>; metric=final_acc; expect=<value> -->

naming the commit and the command that produced it, and one cell of it (reduced where a full cell takes
minutes) with that cell's value as the table's code computed it. This test reruns every check cell with
the current code and fails when the value differs: the table has to be regenerated. A table marked
``stale=<why>`` is known to predate the current code (its check is expected to disagree until the table
is regenerated; strict, so it fails once the code agrees again and the marker is out of date).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from prunekit.experiments import configs_from_recipe, run_experiment

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- table: (.*?) -->")
RESULT_TABLES = {"docs/dst.md": 1, "docs/pai.md": 1, "docs/bip.md": 1, "docs/lap.md": 1, "docs/reports.md": 1}


def split_words(text: str) -> list[str]:
    """Words separated by spaces outside brackets (``method={name: dpai, sparsity: 0.99}`` is one word)."""
    words, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == " " and depth == 0:
            words, current = ([*words, current] if current else words), ""
        else:
            current += ch
    return [*words, current] if current else words


def markers() -> list[tuple[str, dict[str, str]]]:
    out = []
    for path in sorted((REPO / "docs").glob("*.md")):
        for text in MARKER.findall(path.read_text()):
            fields = dict(part.strip().split("=", 1) for part in text.split(";") if "=" in part)
            out.append((str(path.relative_to(REPO)), fields))
    return out


def test_every_result_table_says_its_commit_and_command():
    found: dict[str, int] = {}
    for doc, fields in markers():
        assert re.fullmatch(r"[0-9a-f]{7,40}", fields.get("commit", "")), (doc, fields)
        assert fields.get("command") and fields.get("check") and fields.get("expect"), (doc, fields)
        found[doc] = found.get(doc, 0) + 1
    assert {doc: n for doc, n in found.items() if doc in RESULT_TABLES} == RESULT_TABLES


@pytest.mark.parametrize("doc, fields", [pytest.param(d, f, id=d) for d, f in markers()])
def test_a_cell_of_each_documented_table_reruns_to_its_value(doc, fields, tmp_path, request):
    if "stale" in fields:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{doc}: {fields['stale']}"))
    recipe, *overrides = split_words(fields["check"])
    (cfg,) = configs_from_recipe(recipe, [*overrides, f"output.root={tmp_path}"])
    row = run_experiment(cfg)
    assert f"{row[fields.get('metric', 'final_acc')]:.2f}" == fields["expect"], \
        f"{doc}: the table disagrees with the code; regenerate it ({fields['command']})"
