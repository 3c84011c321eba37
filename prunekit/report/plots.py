"""Plots (matplotlib, drawn off-screen): accuracy vs sparsity, per-layer sparsity, training curves.

* :func:`accuracy_vs_sparsity` — one line per method with ±std error bars over seeds against the
  fraction of weights remaining on a log axis (the GraNet/BiP/LTH figures' convention: sparser to the
  right); dense as a horizontal line with its std band; the paper's numbers as hollow markers.
* :func:`layer_sparsity` — per-layer sparsity bars of one or more runs' masks (``masks.json``).
* :func:`training_curves` — test accuracy and training loss against epochs, phases laid end to end
  (a run's shared dense pretraining first, then its fine-tuning).

Each returns a :class:`matplotlib.figure.Figure` (or None when there is nothing to draw);
:func:`save` writes it as PNG and SVG atomically and returns the PNG bytes.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window (and no display needed)

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from ..utils.io import atomic_write_bytes  # noqa: E402
from .tables import Section  # noqa: E402

FORMATS = ("png", "svg")


def _figure(width: float = 7.0, height: float = 4.2, rows: int = 1) -> Figure:
    return Figure(figsize=(width, height * rows), layout="constrained")  # Figure(): no pyplot global state


def _legend(fig: Figure, entries: list[tuple[Any, str]] | None = None) -> None:
    """One legend below the axes (it never hides data; constrained layout makes room), in ``entries`` order."""
    handles, labels = zip(*entries) if entries else fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=7, frameon=False)


def accuracy_vs_sparsity(section: Section, metric: str = "final_acc") -> Figure | None:
    dense = [e for e in section.entries if e.method_name == "dense"]
    methods: dict[str, list] = {}
    for e in section.entries:
        if e.method_name != "dense":
            methods.setdefault(e.method, []).append(e)
    if not methods and not dense:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    remaining = sorted({100.0 * (1.0 - e.sparsity) for es in methods.values() for e in es} | {100.0})
    colors = matplotlib.colormaps["tab10"].colors
    legend = []
    for i, (label, entries) in enumerate(methods.items()):
        entries = sorted(entries, key=lambda e: e.sparsity)
        color = colors[i % len(colors)]
        x = [100.0 * (1.0 - e.sparsity) for e in entries]
        legend.append((ax.errorbar(x, [e.mean for e in entries], yerr=[e.std or 0.0 for e in entries], color=color,
                                   marker="o", markersize=4, capsize=3, linewidth=1.5, label=label), label))
        ref = [(xi, e.reference) for xi, e in zip(x, entries) if e.reference is not None]
        if ref:
            line, = ax.plot(*zip(*ref), linestyle=":", marker="o", markerfacecolor="none", color=color,
                            label=f"{label} (paper)")
            legend.append((line, line.get_label()))
    for e in dense:
        lo, hi = remaining[0], remaining[-1]
        line = ax.axhline(e.mean, color="black", linewidth=1.2, label=f"dense ({e.n} seed{'s' * (e.n != 1)})")
        legend.append((line, line.get_label()))
        if e.std:
            ax.axhspan(e.mean - e.std, e.mean + e.std, color="black", alpha=0.08, linewidth=0)
        if e.reference is not None:
            line = ax.axhline(e.reference, color="black", linestyle=":", linewidth=1.0, label="dense (paper)")
            legend.append((line, line.get_label()))
        ax.set_xlim(hi * 1.15, lo / 1.15)
    ax.set_xscale("log")
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.xaxis.set_major_locator(FixedLocator(remaining))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlabel("weights remaining (%), log scale")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_title(section.title, fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(fig, legend)
    return fig


def _mask_report(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "masks.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def layer_sparsity(runs: dict[str, str | Path]) -> Figure | None:
    """Grouped bars: per-layer sparsity of each run's masks (``{label: run_dir}``; runs without masks skipped)."""
    reports = {label: r for label, d in runs.items() if (r := _mask_report(d)) and r.get("layers")}
    if not reports:
        return None
    layers = list(dict.fromkeys(name for r in reports.values() for name in r["layers"]))
    fig = _figure(height=max(2.5, 0.28 * len(layers) * max(1, len(reports)) ** 0.5 + 1.2))
    ax = fig.add_subplot()
    width = 0.8 / len(reports)
    colors = matplotlib.colormaps["tab10"].colors
    for i, (label, report) in enumerate(reports.items()):
        ys = [j + (i - (len(reports) - 1) / 2) * width for j in range(len(layers))]
        values = [100.0 * report["layers"].get(name, {}).get("sparsity", float("nan")) for name in layers]
        ax.barh(ys, values, height=width, color=colors[i % len(colors)],
                label=f"{label}: {100.0 * report['sparsity']:.1f}% overall")
    ax.set_yticks(range(len(layers)), [n.removesuffix(".weight") for n in layers], fontsize=7)
    ax.invert_yaxis()  # first layer on top
    ax.set_xlim(0, 100)
    ax.set_xlabel("layer sparsity (%)")
    ax.grid(True, axis="x", alpha=0.3)
    _legend(fig)
    return fig


def _phase_files(run_dir: Path) -> list[Path]:
    """The metric files of a run in training order: its shared pretraining (when it used one) first."""
    files = []
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        from ..errors import PrunekitError
        from ..experiments.config import build_config, pretrain_hash
        from ..experiments.sweep import method_schedule

        try:
            cfg = build_config(yaml.safe_load(config.read_text()))
            pre = run_dir.parents[1] / "_pretrained" / pretrain_hash(cfg) / "metrics-pretrain.jsonl"
            if pre.is_file() and method_schedule(cfg.method) in ("none", "after"):
                files.append(pre)
        except (PrunekitError, yaml.YAMLError, OSError, IndexError):
            pass
    order = {"pretrain": 0, "prune": 1, "train": 2, "finetune": 3}
    own = sorted(run_dir.glob("metrics-*.jsonl"), key=lambda p: order.get(p.stem.split("-", 1)[1], 9))
    return files + own


def read_curve(run_dir: str | Path) -> list[dict[str, Any]]:
    """Evaluation records of a run's phases with ``total_epoch`` counted across phases."""
    records, offset = [], 0.0
    for path in _phase_files(Path(run_dir)):
        last = 0.0
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill; the resumed run rewrote it
            if "test_acc" in rec:
                last = float(rec.get("epoch", 0.0))
                records.append({**rec, "total_epoch": offset + last})
        offset += last
    return records


def training_curves(runs: dict[str, str | Path]) -> Figure | None:
    """Test accuracy (top) and training loss (bottom) against epochs for each ``{label: run_dir}``."""
    curves = {label: c for label, d in runs.items() if (c := read_curve(d))}
    if not curves:
        return None
    fig = _figure(height=2.6, rows=2)
    acc, loss = fig.subplots(2, 1, sharex=True)
    colors = matplotlib.colormaps["tab10"].colors
    for i, (label, recs) in enumerate(curves.items()):
        x = [r["total_epoch"] for r in recs]
        acc.plot(x, [r["test_acc"] for r in recs], color=colors[i % len(colors)], linewidth=1.2, label=label)
        loss.plot(x, [r.get("train_loss", float("nan")) for r in recs], color=colors[i % len(colors)], linewidth=1.2)
    acc.set_ylabel("test acc (%)")
    loss.set_ylabel("train loss")
    loss.set_yscale("log")
    loss.set_xlabel("epoch (pretraining, then the run's own phase)")
    for ax in (acc, loss):
        ax.grid(True, alpha=0.3)
    _legend(fig)
    return fig


def save(fig: Figure, stem: str | Path, formats: tuple[str, ...] = FORMATS) -> bytes:
    """Write ``stem.png`` and ``stem.svg`` (each atomically); returns the PNG bytes (for embedding)."""
    png = b""
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=110, metadata={"Software": None} if fmt == "png" else {"Date": None})
        atomic_write_bytes(Path(f"{stem}.{fmt}"), buf.getvalue())
        if fmt == "png":
            png = buf.getvalue()
    return png
