"""Plots (matplotlib, drawn off-screen): accuracy vs sparsity, per-layer sparsity, training curves.

* :func:`accuracy_vs_sparsity` — one line per group of runs (:mod:`.groups`) with ±std error bars over
  seeds against the measured fraction of weights remaining on a log axis (the GraNet/BiP/LTH figures'
  convention: sparser to the right); dense as a horizontal line with its std band; the paper's numbers
  as hollow markers; ``family=`` draws one paper's comparison with its method in bold.
* :func:`structured_view` — structured runs against channels removed and against FLOPs reduction.
* :func:`accuracy_vs_cost` — accuracy against training FLOPs relative to one dense training.
* :func:`layer_sparsity` — per-layer sparsity bars of one or more runs' masks (``masks.json``).
* :func:`training_curves` — test accuracy and training loss against epochs, phases laid end to end
  (a run's shared dense pretraining first, then its fine-tuning).

Each returns a :class:`matplotlib.figure.Figure` (or None when there is nothing to draw);
:func:`save` writes it as PNG, SVG and PDF atomically and returns the PNG bytes. One colour per method
(:func:`color`) in every figure; :func:`style` picks the screen or the single-column paper geometry.
"""
from __future__ import annotations

import contextlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")  # files only, never a window (and no display needed)

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from ..experiments.layout import RunPaths  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from ..utils.io import atomic_write_bytes  # noqa: E402
from .groups import FAMILIES, PAPER_METHODS  # noqa: E402
from .tables import Entry, Section  # noqa: E402

FORMATS = ("png", "svg", "pdf")


@dataclass(frozen=True)
class Style:
    """Figure geometry and type sizes: ``screen`` for the HTML page, ``paper`` for a single column (3.4 in)."""

    width: float
    height: float
    font: float
    legend: float
    dpi: int
    legend_columns: int

    def rc(self) -> dict[str, Any]:
        return {"font.size": self.font, "axes.titlesize": self.font + 1, "axes.labelsize": self.font,
                "xtick.labelsize": self.font - 1, "ytick.labelsize": self.font - 1, "legend.fontsize": self.legend,
                "lines.linewidth": 1.4, "pdf.fonttype": 42, "svg.fonttype": "none"}


STYLES = {"screen": Style(7.0, 4.2, 10.0, 9.0, 110, 3), "paper": Style(3.4, 2.6, 8.0, 7.0, 300, 2)}
_style = STYLES["screen"]


@contextlib.contextmanager
def style(name: str = "screen") -> Iterator[Style]:
    """Draw and save figures in ``name``'s style (:data:`STYLES`) inside the block."""
    global _style
    if name not in STYLES:
        raise ConfigError(f"style={name!r} not allowed; allowed: {', '.join(STYLES)}")
    previous, _style = _style, STYLES[name]
    try:
        with matplotlib.rc_context(_style.rc()):
            yield _style
    finally:
        _style = previous


# One colour per method, the same in every figure and page, and no two methods alike: the four papers'
# methods in strong colours, then their baselines through tab10, Dark2 and the light half of tab20
# (a name not listed: a stable pick from the light half).
_TAB10, _TAB20 = matplotlib.colormaps["tab10"].colors, matplotlib.colormaps["tab20"].colors
_PALETTE = [_TAB10[i] for i in (3, 1, 4, 2, 0, 9, 7, 5, 6, 8)] + list(matplotlib.colormaps["Dark2"].colors) + \
    [_TAB20[i] for i in range(1, 20, 2)]
_ORDER = ("DPaI", "GraNet", "BiP", "LAP", "SNIP", "SynFlow", "random ERK", "magnitude @init", "GraSP", "IMP",
          "RigL", "GMP", "OMP", "MP", "SET", "Hydra", "LAP-forward", "LAP-backward", "iterative SNIP", "ProsPr",
          "NPB", "PHEW", "random uniform", "GraNet uniform", "LAP-BN", "LAP-act", "structured", "OBD")
COLORS = {"dense": (0.0, 0.0, 0.0), **dict(zip(_ORDER, _PALETTE))}
_MARKERS = ("o", "s", "^", "D", "v", "P")
_LINES = ("-", "--", "-.", ":")


def color(name: str) -> tuple[float, ...]:
    """The colour of a method (its paper name, :func:`prunekit.report.groups.display_name`), or of a
    label that starts with one (``GraNet s_i=0 (seed 0)``: GraNet's)."""
    if name in COLORS:
        return COLORS[name]
    known = [k for k in COLORS if name.startswith(k + " ") or name.startswith(k + "(")]
    if known:
        return COLORS[max(known, key=len)]
    return _PALETTE[-10:][zlib.crc32(name.encode()) % 10]


def _figure(width: float | None = None, height: float | None = None, rows: int = 1, cols: int = 1) -> Figure:
    width = (width or _style.width) * cols
    height = (height or _style.height) * (rows if cols == 1 else 1)
    return Figure(figsize=(width, height), layout="constrained")  # Figure(): no pyplot global state


def _legend(fig: Figure, entries: list[tuple[Any, str]] | None = None) -> None:
    """One legend below the axes (it never hides data; constrained layout makes room), in ``entries`` order."""
    handles, labels = zip(*entries) if entries else fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=_style.legend_columns, frameon=False)


def _series(entries: list[Entry]) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    for e in entries:
        if e.method_name != "dense":
            out.setdefault(e.series or e.method, []).append(e)
    return out


def _remaining(e: Entry) -> float:
    """x of a point: the weights the masks really kept, % (measured, not the target)."""
    return 100.0 * (1.0 - e.achieved)


def _ticks(values: list[float]) -> list[float]:
    """The points' x values, rounded to 2 significant digits, at least a factor 1.2 apart (log axis)."""
    out: list[float] = []
    for v in sorted({float(f"{v:.2g}") for v in values if v > 0}, reverse=True):
        if not out or out[-1] / v >= 1.2:
            out.append(v)
    return sorted(out)


def _draw_dense(ax, dense: list[Entry], legend: list) -> None:
    for e in dense:
        line = ax.axhline(e.mean, color="black", linewidth=1.2, label=f"dense ({e.n} seed{'s' * (e.n != 1)})")
        legend.append((line, line.get_label()))
        if e.std:
            ax.axhspan(e.mean - e.std, e.mean + e.std, color="black", alpha=0.08, linewidth=0)
        if e.reference is not None:
            line = ax.axhline(e.reference, color="black", linestyle=":", linewidth=1.0, label="dense (paper)")
            legend.append((line, line.get_label()))


def _draw_series(ax, entries: list[Entry], x_of, legend: list, highlight: tuple[str, ...] = ()) -> None:
    """One error-bar line per series (mean ± std over seeds), colour by method, marker by variant; the
    paper numbers as hollow markers on a dotted line; a point with fewer seeds than its section's other
    groups is drawn hollow."""
    variants: dict[str, int] = {}
    for key, es in _series(entries).items():
        es = sorted(es, key=x_of, reverse=True)
        first = es[0]
        variant = variants[first.name] = variants.get(first.name, -1) + 1
        strong = first.method_name in highlight
        kw = dict(color=color(first.name), marker=_MARKERS[variant % len(_MARKERS)],
                  linestyle=_LINES[variant % len(_LINES)], markersize=5 if strong else 4, capsize=3,
                  linewidth=2.6 if strong else 1.3, zorder=3 if strong else 2, label=first.method)
        x = [x_of(e) for e in es]
        legend.append((ax.errorbar(x, [e.mean for e in es], yerr=[e.std or 0.0 for e in es], **kw), first.method))
        short = [(xi, e.mean) for xi, e in zip(x, es) if e.short_of_seeds and not e.level]
        if short:
            ax.plot(*zip(*short), linestyle="none", marker=kw["marker"], markersize=7, markerfacecolor="white",
                    color=kw["color"], zorder=4, label=f"{first.method} (fewer seeds)")
        ref = [(xi, e.reference) for xi, e in zip(x, es) if e.reference is not None]
        if ref:
            line, = ax.plot(*zip(*ref), linestyle=":", marker=kw["marker"], markerfacecolor="none", color=kw["color"],
                            label=f"{first.method} (paper)")
            legend.append((line, line.get_label()))


def _log_remaining_axis(ax, xs: list[float]) -> None:
    ticks = _ticks(xs)
    ax.set_xscale("log")
    if xs:
        ax.set_xlim(max(xs) * 1.15, min(xs) / 1.15)  # inverted: sparser to the right
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlabel("weights remaining (%, measured from the masks), log scale")


def accuracy_vs_sparsity(section: Section, metric: str | None = None, family: str | None = None) -> Figure | None:
    """Accuracy against the measured weights remaining (log scale, sparser to the right), mean ± std over
    seeds, dense as a line with its std band; ``family``: only that paper's comparison, its method drawn
    bold (:data:`prunekit.report.groups.FAMILIES`). IMP's levels are points of their IMP line."""
    metric = section.metric if metric in (None, "paper") else metric
    chosen = [e for e in section.entries if e.method_name != "dense" and (family is None or e.family == family)]
    dense = [e for e in section.entries if e.method_name == "dense"]
    if not chosen and (family is not None or not dense):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    legend: list = []
    _draw_series(ax, chosen, _remaining, legend, highlight=PAPER_METHODS if family else ())
    _draw_dense(ax, dense, legend)
    _log_remaining_axis(ax, [_remaining(e) for e in chosen] + [100.0])
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_title(section.title if family is None else f"{section.title}\n{FAMILIES[family]}")
    ax.grid(True, alpha=0.3)
    _legend(fig, legend)
    return fig


def structured_view(section: Section, metric: str | None = None) -> Figure | None:
    """Structured runs: accuracy against the fraction of channels removed (their target) and against the
    inference FLOPs reduction (dense / masked FLOPs), beside the weight-sparsity view of
    :func:`accuracy_vs_sparsity`."""
    metric = section.metric if metric in (None, "paper") else metric
    chosen = [e for e in section.entries if e.structured and e.method_name != "dense"]
    if not chosen:
        return None
    fig = _figure(cols=2, width=_style.width * 0.6)
    channels, flops = fig.subplots(1, 2, sharey=True)
    legend: list = []
    _draw_series(channels, chosen, lambda e: 100.0 * e.sparsity, legend)
    _draw_series(flops, [e for e in chosen if e.flops_reduction], lambda e: e.flops_reduction, [])
    dense = [e for e in section.entries if e.method_name == "dense"]
    _draw_dense(channels, dense, legend)
    _draw_dense(flops, dense, [])
    channels.set_xlabel("channels removed (%)")
    flops.set_xlabel("inference FLOPs reduction (× dense), log scale")
    flops.set_xscale("log")
    channels.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    for ax in (channels, flops):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{section.title}: structured runs")
    _legend(fig, legend)
    return fig


def accuracy_vs_cost(section: Section, metric: str | None = None) -> Figure | None:
    """Accuracy against the training FLOPs of the whole run relative to one dense training (log scale):
    pretraining, IMP's level chain and BiP's bi-level steps included."""
    metric = section.metric if metric in (None, "paper") else metric
    chosen = [e for e in section.entries if e.cost and e.method_name != "dense"]
    if not chosen:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    legend: list = []
    _draw_series(ax, chosen, lambda e: e.cost, legend, highlight=PAPER_METHODS)
    _draw_dense(ax, [e for e in section.entries if e.method_name == "dense"], legend)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (× one dense training), log scale")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_title(f"{section.title}: accuracy vs training cost")
    ax.grid(True, alpha=0.3)
    _legend(fig, legend)
    return fig


def _mask_report(run_dir: str | Path) -> dict[str, Any] | None:
    path = RunPaths.at(run_dir).mask_report
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
    for i, (label, report) in enumerate(reports.items()):
        ys = [j + (i - (len(reports) - 1) / 2) * width for j in range(len(layers))]
        values = [100.0 * report["layers"].get(name, {}).get("sparsity", float("nan")) for name in layers]
        ax.barh(ys, values, height=width, color=color(label),
                label=f"{label}: {100.0 * report['sparsity']:.1f}% overall")
    ax.set_yticks(range(len(layers)), [n.removesuffix(".weight") for n in layers], fontsize=_style.font - 1)
    ax.invert_yaxis()  # first layer on top
    ax.set_xlim(0, 100)
    ax.set_xlabel("layer sparsity (%)")
    ax.grid(True, axis="x", alpha=0.3)
    _legend(fig)
    return fig


def read_curve(run_dir: str | Path) -> list[dict[str, Any]]:
    """Evaluation records of a run's phases with ``total_epoch`` counted across phases."""
    records, offset = [], 0.0
    for path in RunPaths.at(run_dir).curve_files():
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
    fig = _figure(height=0.62 * _style.height, rows=2)
    acc, loss = fig.subplots(2, 1, sharex=True)
    for label, recs in curves.items():
        x = [r["total_epoch"] for r in recs]
        acc.plot(x, [r["test_acc"] for r in recs], color=color(label), linewidth=1.2, label=label)
        loss.plot(x, [r.get("train_loss", float("nan")) for r in recs], color=color(label), linewidth=1.2)
    acc.set_ylabel("test acc (%)")
    loss.set_ylabel("train loss")
    loss.set_yscale("log")
    loss.set_xlabel("epoch (pretraining, then the run's own phase)")
    for ax in (acc, loss):
        ax.grid(True, alpha=0.3)
    _legend(fig)
    return fig


def save(fig: Figure, stem: str | Path, formats: tuple[str, ...] = FORMATS) -> bytes:
    """Write ``stem.png``, ``stem.svg`` and ``stem.pdf`` (vector; each atomically, no timestamps inside);
    returns the PNG bytes (for embedding)."""
    png = b""
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=_style.dpi, metadata=metadata.get(fmt, {}))
        atomic_write_bytes(Path(f"{stem}.{fmt}"), buf.getvalue())
        if fmt == "png":
            png = buf.getvalue()
    return png
