"""Report groups: runs are averaged only when every resolved setting but the seed agrees, a (group, seed)
stored twice counts once, labels name what differs; plots put every point at its measured sparsity
(structured runs, IMP levels) and draw one colour per method."""
import pytest

from prunekit.experiments import ResultsStore, build_config
from prunekit.experiments.config import identity
from prunekit.report import plots
from prunekit.report.build import write_report
from prunekit.report.groups import labels, series_key, settings
from prunekit.report.tables import aggregate

BASE = {"name": "g", "model": {"name": "mlp"}, "data": {"name": "sklearn_digits"}}


def _config(method: dict, **sections) -> dict:
    return identity(build_config({**BASE, "method": method, **sections}))


def _row(run_id, method, seed, acc, sparsity=0.9, achieved=None, status="finished", finished=0.0, **sections):
    if method["name"] == "structured":  # channel pruning needs a conv model (and 16x16 inputs): no build here
        cfg = {"model": {"name": "lenet5"}, "method": {"sparsity": sparsity, **method}, "seed": seed}
    else:
        cfg = _config(method if method["name"] == "dense" else {"sparsity": sparsity, **method}, **sections)
    return {"run_id": run_id, "recipe": "g", "method": method["name"], "model": "mlp", "dataset": "sklearn_digits",
            "seed": seed, "target_sparsity": 0.0 if method["name"] == "dense" else sparsity,
            "achieved_sparsity": sparsity if achieved is None else achieved, "final_acc": acc, "best_acc": acc,
            "wall_time": 1.0, "status": status, "run_dir": "", "config": cfg, "finished_at": finished,
            "flops": 100.0, "sparse_flops": 100.0 * (1 - (sparsity if achieved is None else achieved))}


def test_groups_that_differ_only_in_lr_stay_apart_and_a_duplicate_counts_once(tmp_path):
    omp = {"name": "magnitude", "when": "after"}
    rows = [_row(f"a{s}", omp, s, 90.0 + s) for s in (0, 1, 2)]
    rows += [_row("lr0", omp, 0, 10.0, train={"lr": 0.001}), _row("lr1", omp, 1, 12.0, train={"lr": 0.001})]
    rows.append(_row("a0-again", omp, 0, 95.0, finished=5.0))  # seed 0 of the default group stored twice
    store = ResultsStore(tmp_path / "results.sqlite")
    for row in rows:
        store.record(row)
    files = write_report(store.rows(), tmp_path / "report", figures=False, html=False)
    (section,) = files.sections
    by_label = {e.method: e for e in section.entries}
    assert set(by_label) == {"OMP", "OMP lr=0.001"}  # the low-LR runs are not more seeds of the default
    default, low = by_label["OMP"], by_label["OMP lr=0.001"]
    assert sorted(default.seeds) == [0, 1, 2] and sorted(default.values) == [91.0, 92.0, 95.0]  # latest seed-0 row
    assert low.seeds == [0, 1] and low.mean == pytest.approx(11.0)
    assert low.short_of_seeds and not default.short_of_seeds
    assert "| OMP lr=0.001 | 0.9 | 0.9000 | 2 of 3 | 11.00 ± 1.41 |" in files.markdown


def test_a_default_spelled_out_is_the_same_group():
    a = _row("a", {"name": "granet"}, 0, 90.0)
    b = _row("b", {"name": "granet", "initial_sparsity": 0.5}, 1, 91.0)
    b["config"] = {**b["config"], "method": {"name": "granet", "sparsity": 0.9, "initial_sparsity": 0.5}}
    assert series_key(a) == series_key(b)
    (section,) = aggregate([a, b])
    assert [(e.method, e.n) for e in section.entries] == [("GraNet", 2)]


def test_labels_name_only_what_differs():
    rows = [_row("d", {"name": "dense"}, 0, 97.0),
            _row("g0", {"name": "granet", "initial_sparsity": 0.0}, 0, 95.0),
            _row("g5", {"name": "granet", "initial_sparsity": 0.5}, 0, 95.0),
            _row("mi", {"name": "magnitude", "when": "init"}, 0, 90.0),
            _row("om", {"name": "magnitude", "when": "after"}, 0, 93.0),
            _row("re", {"name": "random", "allocation": "erk"}, 0, 80.0),
            _row("rg", {"name": "rigl", "update_frequency": 50}, 0, 94.0)]
    names = labels({series_key(r): settings(r) for r in rows})
    assert sorted(names.values()) == ["GraNet s_i=0", "GraNet s_i=0.5", "OMP", "RigL", "dense",
                                      "magnitude @init", "random ERK"]


def _x(fig, label):
    container = next(c for c in fig.axes[0].containers if c.get_label() == label)
    return list(container.lines[0].get_xdata())


def test_structured_and_imp_points_sit_at_their_measured_sparsity():
    structured = {"name": "structured"}
    rows = [_row(f"s{p}", structured, 0, 90.0, sparsity=p, achieved=a)
            for p, a in ((0.25, 0.43), (0.5, 0.74), (0.75, 0.93))]
    imp = {"name": "imp"}
    levels = [_row(f"L{i}", imp, 0, 96.0, sparsity=0.9, achieved=a, status="level")
              for i, a in enumerate((0.0, 0.2, 0.36, 0.488))]
    levels.append(_row("imp", imp, 0, 95.0, sparsity=0.5904, achieved=0.5904))
    # one IMP run draws its curve: every level (its own stored row, level 0 = dense left out) and the end
    assert _x(plots.accuracy_vs_sparsity(aggregate(levels)[0]), "IMP") == pytest.approx([80.0, 64.0, 51.2, 40.96])
    (section,) = aggregate(rows)
    fig = plots.accuracy_vs_sparsity(section)
    # 25/50/75 % of channels removed: drawn at the weights the masks kept, not at 75/50/25 %
    assert _x(fig, "structured") == pytest.approx([57.0, 26.0, 7.0])
    channels = plots.structured_view(section)
    by_channels, by_flops = channels.axes[:2]
    xs = [list(c.lines[0].get_xdata()) for c in by_channels.containers]
    assert xs == [pytest.approx([75.0, 50.0, 25.0])]
    assert list(by_flops.containers[0].lines[0].get_xdata()) == pytest.approx([1 / 0.07, 1 / 0.26, 1 / 0.57])


def test_one_colour_per_method_in_every_figure():
    a = [_row("b", {"name": "bip"}, 0, 90.0), _row("o", {"name": "magnitude"}, 0, 89.0)]
    b = a[:1] + [_row("i", {"name": "imp"}, 0, 91.0), _row("s", {"name": "snip"}, 0, 70.0)]
    colours = []
    for rows in (a, b):
        (section,) = aggregate(rows)
        fig = plots.accuracy_vs_sparsity(section)
        colours.append({c.get_label(): c.lines[0].get_color() for c in fig.axes[0].containers})
    assert colours[0]["BiP"] == colours[1]["BiP"] == plots.color("BiP")
    assert len({*colours[0].values(), *colours[1].values()}) == 4
    assert plots.color("GraNet s_i=0 (seed 0)") == plots.color("GraNet")


def test_paper_numbers_per_model_and_the_sparsest_winning_ticket(tmp_path):
    """A recipe's ``models:`` block gives each model its numbers (GraNet Table 2's quoted cells); BiP's
    winning-ticket column is computed its way: the sparsest sparsity whose mean is >= the dense mean."""
    rows = [dict(_row(f"g{s}", {"name": "granet", "initial_sparsity": 0.0}, s, 94.0 + s, sparsity=0.95),
                 recipe="granet_cifar10", model="cifar_resnet50") for s in (0, 1)]
    (section,) = aggregate(rows, "paper")
    assert section.metric == "best_acc"  # the recipe names what the paper reports
    (entry,) = section.entries
    assert entry.method == "GraNet" and entry.reference == 94.44  # found under the full label "GraNet s_i=0"
    assert entry.diff == pytest.approx(94.5 - 94.44)
    bip = [_row(f"d{s}", {"name": "dense"}, s, 92.0) for s in (0, 1)]
    bip += [_row(f"b{p}{s}", {"name": "bip"}, s, acc, sparsity=p)
            for p, acc in ((0.5, 92.4), (0.67, 92.1), (0.8, 91.9)) for s in (0, 1)]
    bip += [_row(f"o{s}", {"name": "magnitude", "when": "after"}, s, 91.0, sparsity=0.5) for s in (0, 1)]
    (section,) = aggregate([dict(r, recipe="bip_resnet20s_cifar10") for r in bip], "paper")
    notes = [n for n in section.notes if n.startswith("sparsest winning ticket")]
    assert notes == ["sparsest winning ticket (mean best acc ≥ our dense 92.00), BiP: ours 67 % (92.10 ± 0.00), "
                     "paper 67 % (92.14 ± 0.15)",
                     "sparsest winning ticket (mean best acc ≥ our dense 92.00), OMP: ours ✗, paper ✗"]
