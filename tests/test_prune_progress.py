"""Pruning searches report their progress (DPaI steps, SynFlow and iterative-SNIP rounds) and DPaI's search
history, with the objective it ascends, is written to the run directory."""
import json
import math

import pytest
import torch

import prunekit as pk
from prunekit.experiments.progress import Reporter


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


@pytest.mark.parametrize("name,settings,total", [("dpai", {"steps": 40, "check_every": 10, "input_shape": (16,)}, 40),
                                                 ("synflow", {"rounds": 7, "input_shape": (16,)}, 7),
                                                 ("iter_snip", {"rounds": 5}, 5)])
def test_searches_report_progress(name, settings, total):
    calls = []
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(6)]
    pruner = pk.create(name, mlp(), sparsity=0.8, **settings)
    pruner.prune(pk.PruneContext(batches=data, progress=lambda done, of: calls.append((done, of))))
    assert calls[-1] == (total, total) and all(of == total for _, of in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_dpai_objective_is_the_logged_quantity():
    pruner = pk.create("dpai", mlp(), sparsity=0.8, steps=20, alpha=0.7, beta=0.3, input_shape=(16,))
    pruner.prune()
    rows = pruner.search_history()
    assert len(rows) == 21
    for r in rows:
        expected = 0.3 * r["log_paths"] + 0.7 * (0.7 * math.log(r["effective_nodes"]) + 0.3 * math.log(r["effective_kernels"]))
        assert r["objective"] == pytest.approx(expected)
    assert pruner.search.final["objective"] == pytest.approx(rows[-1]["objective"])


def test_runner_writes_the_search_and_shows_progress(tmp_path):
    seen = []

    class Recorder(Reporter):
        def task(self, description):
            import contextlib

            @contextlib.contextmanager
            def cm():
                yield lambda done, total: seen.append((description, done, total))
            return cm()

    cfg = {"name": "p", "model": {"name": "mlp"}, "data": {"name": "sklearn_digits", "augment": False},
           "method": {"name": "dpai", "sparsity": 0.9, "steps": 30, "check_every": 10},
           "train": {"duration": "1ep"}, "output": {"root": str(tmp_path)}}
    pk.run(cfg, reporter=Recorder())
    assert seen and seen[-1] == ("prune: dpai", 30, 30)
    (search,) = list(tmp_path.glob("p/dpai-*/search.json"))
    rows = json.loads(search.read_text())
    assert len(rows) == 31 and {"objective", "log_paths", "effective_nodes"} <= set(rows[0])
