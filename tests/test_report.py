"""Reports: mean ± std over seeds (hand-computed), paper numbers side by side (the recipes' format, a real
recipe), Markdown/CSV/LaTeX, plots (what they draw), a self-contained HTML page, the CLI."""
import base64
import csv
import io
import json
import re

import pytest
import yaml

import prunekit as pk
from prunekit.cli import main
from prunekit.experiments import ResultsStore
from prunekit.report import plots
from prunekit.report.build import headline_runs, write_report
from prunekit.report.html import CSP
from prunekit.report.tables import aggregate, reference_value, to_csv, to_latex, to_markdown

REFERENCE = {"source": "Fig. 3, read by eye", "dense": 92.0, "bip": {"0.9": 90.0, "0.5": "n/a"},
             "omp": {"0.5": 91.5}, "best_winning_ticket": 92.4}


def _row(run_id, method, sparsity, seed, acc, recipe="r", run_dir="", status="finished", dataset="cifar10",
         model="resnet20s", best=None, **settings):
    return {"run_id": run_id, "recipe": recipe, "method": method, "model": model, "dataset": dataset, "seed": seed,
            "target_sparsity": sparsity, "achieved_sparsity": sparsity, "final_acc": acc,
            "best_acc": acc + 0.5 if best is None else best, "wall_time": 10.0 + seed, "status": status,
            "run_dir": run_dir, "config": json.dumps({"method": {"name": method, "sparsity": sparsity, **settings}}),
            "finished_at": float(seed)}


@pytest.fixture
def rows(tmp_path):
    run = tmp_path / "r" / "bip-x"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "r", "reference": REFERENCE}))
    return [
        _row("d0", "dense", 0.0, 0, 92.5, run_dir=str(run)),
        _row("b0", "bip", 0.9, 0, 90.0), _row("b1", "bip", 0.9, 1, 91.0), _row("b2", "bip", 0.9, 2, 93.0),
        _row("b3", "bip", 0.5, 0, 92.0),
        _row("m0", "magnitude", 0.5, 0, 91.0), _row("m1", "magnitude", 0.5, 1, 90.0),
        _row("i0", "magnitude", 0.5, 0, 80.0, when="init"),
        _row("f0", "bip", 0.9, 3, 10.0, status="failed"), _row("l0", "imp", 0.2, 0, 50.0, status="level"),
        _row("x0", "dense", 0.0, 0, 99.0, recipe="other", dataset="mnist", model="lenet300_100"),
    ]


def test_mean_std_over_seeds_and_paper_numbers(rows):
    first, second = aggregate(rows)
    assert (first.recipe, first.dataset, second.dataset) == ("r", "cifar10", "mnist")  # sorted by dataset
    e = {(x.method, x.sparsity): x for x in first.entries}
    assert [x.method for x in first.entries][0] == "dense"
    bip = e[("BiP", 0.9)]
    assert bip.seeds == [0, 1, 2]  # the failed seed-3 run is not counted
    assert bip.mean == pytest.approx(91.333333, abs=1e-6)
    assert bip.std == pytest.approx(1.527525, abs=1e-6)  # sqrt(((−4/3)² + (−1/3)² + (5/3)²) / 2)
    assert bip.reference == 90.0 and bip.diff == pytest.approx(1.333333, abs=1e-6)
    assert e[("BiP", 0.5)].reference is None  # "n/a" is not a number
    assert e[("dense", 0.0)].reference == 92.0 and e[("dense", 0.0)].std is None
    assert e[("OMP", 0.5)].reference == 91.5  # one-shot magnitude after training = the paper's OMP
    assert e[("magnitude @init", 0.5)].reference is None
    assert e[("IMP", 0.2)].level and e[("IMP", 0.2)].values == [50.0]  # an IMP level is a point of its own
    assert "source: Fig. 3, read by eye" in first.notes and "best_winning_ticket: 92.4" in first.notes
    assert not second.has_reference and second.entries[0].mean == 99.0
    best = {(x.method, x.sparsity): x for x in aggregate(rows, "best_acc")[0].entries}
    assert best[("BiP", 0.9)].mean == pytest.approx(91.833333, abs=1e-6)


def test_paper_numbers_of_a_shipped_recipe():
    """Rows without a run directory take the reference of the recipe file of their name."""
    rows = [_row("a", "bip", 0.8322, 0, 91.0, recipe="bip_resnet20s_cifar10"),
            _row("b", "dense", 0.0, 0, 92.0, recipe="bip_resnet20s_cifar10")]
    (section,) = aggregate(rows)
    assert [x.reference for x in section.entries] == [92.12, 91.73]
    assert reference_value({"rigl": 76.4}, "rigl", {}, "rigl", 0.8) == 76.4
    assert reference_value({"granet (initial_sparsity=0.5)": {"0.8": 75.0}}, "granet", {"initial_sparsity": 0.5},
                           "granet (initial_sparsity=0.5)", 0.8) == 75.0


def test_markdown_csv_latex(rows):
    sections = aggregate(rows)
    md = to_markdown(sections)
    assert "### r: resnet20s on cifar10" in md
    assert "| BiP | 0.9 | 0.9000 | 3 | 91.33 ± 1.53 | 90.00 | +1.33 | 11.0 |" in md
    assert "| dense | 0 | 0.0000 | 1 | 99.00 | 0.0 |" in md.replace("10.0 |", "0.0 |")  # no paper columns without numbers
    assert "| OMP | 0.5 | 0.5000 | 2 of 3 | 90.50 ± 0.71 |" in md  # fewer seeds than the section's other groups
    table = list(csv.DictReader(io.StringIO(to_csv(sections))))
    bip = next(r for r in table if r["method"] == "BiP" and r["sparsity"] == "0.9")
    assert (bip["seeds"], bip["n"], bip["mean"], bip["std"], bip["paper"], bip["diff"]) == \
        ("0 1 2", "3", "91.3333", "1.5275", "90.0", "1.3333")
    tex = to_latex(sections)
    assert r"magnitude @init & 0.5 & 0.5000 & 1 of 3 & 80.00 & -- & -- & 10.0 \\" in tex
    assert r"91.33 $\pm$ 1.53" in tex and r"\caption{r: resnet20s on cifar10}" in tex
    assert tex.count(r"\begin{tabular}") == 2 and r"lenet300\_100" in tex


def test_accuracy_plot_draws_methods_error_bars_and_paper_points(rows):
    section = aggregate(rows)[0]
    fig = plots.accuracy_vs_sparsity(section)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.xaxis_inverted()
    labels = fig.legends[0].texts
    assert [t.get_text() for t in labels] == ["BiP", "BiP (paper)", "IMP", "OMP", "OMP (paper)",
                                              "magnitude @init", "dense (1 seed)", "dense (paper)"]
    bip = next(c for c in ax.containers if c.get_label() == "BiP")  # an errorbar container
    assert list(bip.lines[0].get_xdata()) == pytest.approx([50.0, 10.0])  # weights remaining, %
    assert list(bip.lines[0].get_ydata()) == pytest.approx([92.0, 91.333333])
    (bars,) = bip.lines[2]  # the vertical error bars: mean ± sample std (none for one seed)
    ends = [y for seg in bars.get_segments() for y in seg[:, 1]]
    assert ends == pytest.approx([92.0, 92.0, 91.333333 - 1.527525, 91.333333 + 1.527525])
    paper = next(line for line in ax.lines if line.get_label() == "BiP (paper)")
    assert list(paper.get_ydata()) == [90.0]


def _tiny_run(tmp_path, name, sparsity):
    model = pk.models.create("mlp", hidden=[12])
    pruner = pk.create("magnitude", model, sparsity=sparsity, allocation="uniform", when="init")
    pruner.prune()
    run = tmp_path / name
    pruner.masks.save(run / "masks.safetensors")
    return run, pruner.masks


def test_layer_sparsity_bars_are_the_masks(tmp_path):
    run, masks = _tiny_run(tmp_path, "a", 0.75)
    fig = plots.layer_sparsity({"a": run, "dense": tmp_path / "no-masks"})
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == pytest.approx([100 * r["sparsity"] for r in masks.per_layer().values()])
    assert plots.layer_sparsity({"dense": tmp_path}) is None


def test_training_curves_lay_phases_end_to_end(tmp_path):
    root = tmp_path / "runs"
    cfg = pk.experiments.build_config({"name": "r", "model": {"name": "mlp"}, "method": {"name": "magnitude"},
                                       "output": {"root": str(root)}})
    from prunekit.experiments.config import pretrain_hash

    run = root / "r" / "magnitude-x"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    pre = root / "_pretrained" / pretrain_hash(cfg)
    pre.mkdir(parents=True)
    lines = lambda phase, accs: "".join(json.dumps({"phase": phase, "step": i, "epoch": i + 1.0, "test_acc": a,  # noqa: E731
                                                    "train_loss": 1.0 / (i + 1)}) + "\n" for i, a in enumerate(accs))
    (pre / "metrics-pretrain.jsonl").write_text(lines("pretrain", [50, 60, 70]))
    (run / "metrics-finetune.jsonl").write_text(lines("finetune", [65, 72]) + '{"phase": "fine')  # a torn line
    curve = plots.read_curve(run)
    assert [(r["total_epoch"], r["test_acc"]) for r in curve] == [(1, 50), (2, 60), (3, 70), (4, 65), (5, 72)]
    fig = plots.training_curves({"omp": run})
    assert list(fig.axes[0].lines[0].get_ydata()) == [50, 60, 70, 65, 72]


def test_html_report_is_self_contained(rows, tmp_path):
    run, _ = _tiny_run(tmp_path, "runs/r/bip-y", 0.5)
    rows = [dict(r, run_dir=str(run)) if r["run_id"] == "b3" else r for r in rows]
    files = write_report(rows, tmp_path / "out")
    page = files.html.read_text()
    assert f'content="{CSP}"' in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # section r: one figure per family (BiP vs IMP/OMP, magnitude @init before training), the accuracy plot,
    # masks at the headline sparsity (0.5: three methods, 0.9: one); section other: accuracy plot; no training
    # curves (no metrics files)
    assert len(images) == 5
    pngs = sorted(p for p in files.figures if p.suffix == ".png")
    assert sorted(base64.b64decode(i) for i in images) == sorted(p.read_bytes() for p in pngs)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert all("<svg" in p.with_suffix(".svg").read_text() for p in pngs)
    assert all(p.with_suffix(".pdf").read_bytes().startswith(b"%PDF") for p in pngs)
    assert page.count('<section class="report-section"') == 2 and page.count("<table>") == 2
    assert '<option value="mnist">mnist</option>' in page and 'data-model="lenet300_100"' in page
    assert "91.33 ± 1.53" in page and "+1.33" in page
    assert headline_runs(files.sections[0])[0] == 0.5  # 0.5 has bip and both magnitudes, 0.9 bip only
    assert {p.name for p in files.tables} == {"results.md", "results.csv", "results.tex"}


def test_cli_report(tmp_path, capsys):
    assert main(["report", "--store", str(tmp_path / "none.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such results store" in err[0]
    store = ResultsStore(tmp_path / "runs" / "results.sqlite")
    for seed, acc in ((0, 97.0), (1, 98.0)):
        store.record(_row(f"d{seed}", "dense", 0.0, seed, acc, recipe="q", dataset="sklearn_digits", model="mlp"))
    assert main(["report", "--store", str(store.path), "--formats", "md,pdf"]) == 2
    assert "--formats pdf" in capsys.readouterr().err
    assert main(["report", "--store", str(store.path), "--formats", "csv"]) == 0
    out = capsys.readouterr().out
    assert "97.50 ± 0.71" in out
    report = tmp_path / "runs" / "report"
    assert f"html   {report / 'report.html'}" in out
    assert sorted(p.name for p in report.iterdir()) == ["q-mlp-sklearn_digits-accuracy.pdf",
                                                        "q-mlp-sklearn_digits-accuracy.png",
                                                        "q-mlp-sklearn_digits-accuracy.svg", "report.html",
                                                        "results.csv"]
    assert main(["report", "--store", str(store.path), "--dataset", "mnist"]) == 0
    assert "no finished runs" in capsys.readouterr().out


def test_cli_report_of_one_run(tmp_path, capsys):
    run, _ = _tiny_run(tmp_path, "run", 0.5)
    assert main(["report", "--run", str(run)]) == 2  # not a run directory: no config.yaml
    capsys.readouterr()
    (run / "config.yaml").write_text("name: x\n")
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["layers.pdf", "layers.png", "layers.svg"]
