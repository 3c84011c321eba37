"""Writing a whole report from result rows: tables (Markdown, CSV, LaTeX), plots (PNG, SVG), HTML.

Per section (recipe × model × dataset): ``<slug>-family-<paper>`` (one figure per paper's comparison when
a section holds several: the demo's DPaI, GraNet, BiP and LAP families), ``<slug>-accuracy`` (accuracy vs
measured sparsity, every group), ``<slug>-channels`` (structured runs: vs channels removed and FLOPs
reduction), ``<slug>-cost`` (vs training FLOPs relative to dense), and at the section's
*headline sparsity* (the one most methods were run at; the middle one on a tie) for each method's
lowest-seed run: ``<slug>-layers`` (per-layer sparsity of the masks) and ``<slug>-curves`` (training
curves, dense included). Every file is written atomically.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.io import atomic_write_text
from . import plots
from .groups import FAMILIES
from .html import Plot, ReportPage, render
from .tables import Section, aggregate, to_csv, to_latex, to_markdown

TABLE_FORMATS = {"md": to_markdown, "csv": to_csv, "tex": to_latex}


@dataclass
class ReportFiles:
    markdown: str
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    html: Path | None = None
    sections: list[Section] = field(default_factory=list)


def headline_runs(section: Section) -> tuple[float | None, dict[str, str]]:
    """(headline sparsity, ``{method label: run_dir}``) of the lowest seed per method, dense included."""
    sparse = [e for e in section.entries if e.method_name != "dense"]
    counts = Counter(e.sparsity for e in sparse)
    tied = sorted(s for s in counts if counts[s] == max(counts.values()))
    sparsity = tied[len(tied) // 2] if tied else None
    runs = {}
    for e in section.entries:
        if e.method_name == "dense" or e.sparsity == sparsity:
            seed, run_dir = min(zip(e.seeds, e.run_dirs))
            if run_dir:
                runs[f"{e.method} (seed {seed})"] = run_dir
    return sparsity, runs


def _families(section: Section) -> list[str]:
    """The papers' families a section compares (two or more: one figure each, else none)."""
    present = {e.family for e in section.entries if e.family and e.method_name != "dense"}
    ordered = [f for f in FAMILIES if f in present]
    return ordered if len(ordered) > 1 else []


def _section_plots(section: Section, out: Path, metric: str) -> tuple[list[Plot], list[Path]]:
    sparsity, runs = headline_runs(section)
    at = "" if sparsity is None else f" at sparsity {sparsity:g}"
    name = section.metric.replace("_", " ")
    figures = [(f"family-{f}", f"{FAMILIES[f]}: {name} vs weights remaining (measured), mean ± std over seeds",
                plots.accuracy_vs_sparsity(section, metric, family=f)) for f in _families(section)]
    figures += [
        ("accuracy", f"{name} vs weights remaining (measured from the masks), mean ± std over seeds",
         plots.accuracy_vs_sparsity(section, metric)),
        ("channels", f"structured runs: {name} vs channels removed and vs inference FLOPs reduction",
         plots.structured_view(section, metric)),
        ("cost", f"{name} vs training FLOPs of the whole run (× one dense training)",
         plots.accuracy_vs_cost(section, metric)),
        ("layers", f"per-layer sparsity of the masks{at}", plots.layer_sparsity(runs)),
        ("curves", f"training curves{at} (dense: its training)", plots.training_curves(runs)),
    ]
    out_plots, paths = [], []
    for name, caption, fig in figures:
        if fig is None:
            continue
        stem = out / f"{section.slug}-{name}"
        out_plots.append(Plot(caption, plots.save(fig, stem), lead=name.startswith("family-")))
        paths += [Path(f"{stem}.{fmt}") for fmt in plots.FORMATS]
    return out_plots, paths


def write_report(rows: list[dict[str, Any]], out: str | Path, metric: str = "final_acc",
                 formats: tuple[str, ...] = ("md", "csv", "tex"), html: bool = True, figures: bool = True,
                 subtitle: str = "", style: str = "screen") -> ReportFiles:
    """Aggregate ``rows`` and write ``results.{md,csv,tex}``, the plots (PNG, SVG, PDF in ``style``) and
    ``report.html`` into ``out``."""
    out = Path(out)
    sections = aggregate(rows, metric)
    files = ReportFiles(markdown=to_markdown(sections, metric), sections=sections)
    for fmt in formats:
        files.tables.append(atomic_write_text(out / f"results.{fmt}", TABLE_FORMATS[fmt](sections, metric)))
    page = ReportPage(sections, metric=metric, subtitle=subtitle)
    if figures:
        with plots.style(style):
            for section in sections:
                page.plots[section.slug], paths = _section_plots(section, out, metric)
                files.figures += paths
    if html:
        files.html = atomic_write_text(out / "report.html", render(page))
    return files
