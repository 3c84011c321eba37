"""Every registered method on models prunekit did not build: it works, or it refuses in one documented line."""
import os

import pytest

from tests import model_matrix as mm


@pytest.fixture(scope="module")
def results():
    if os.environ.get("CI") != "true":  # CI installs the test extra: there a missing transformers fails
        pytest.importorskip("transformers")
    return {}


@pytest.mark.parametrize("model_name,method", mm.all_cells(), ids=[f"{m}-{x}" for m, x in mm.all_cells()])
def test_cell_works_or_refuses_documented(results, model_name, method):
    out = mm.run_cell(mm.model_by_name(model_name), method)
    if not out.ok:
        assert out.refusal is not None, f"undocumented refusal: {out.detail}"
    results[(model_name, method)] = out


def test_docs_models_md_matches_the_matrix(results):
    if len(results) < len(mm.all_cells()):
        pytest.skip("needs the whole matrix in this pytest run")
    assert mm.DOC.read_text() == mm.render(results), "docs/models.md is stale: python -m tests.model_matrix --write"
