"""Result tables: mean ± std over seeds by method and sparsity, with the paper's numbers side by side.

Rows come from the results store (finished runs, and IMP's intermediate levels as points of their own).
A *section* is one recipe × model × dataset; an *entry* is one group of runs that differ only in their
seed (:mod:`prunekit.report.groups`: every resolved setting counts), aggregated over seeds (sample
standard deviation, n - 1; none for a single seed); a (group, seed) stored twice counts once.

Paper numbers come from the recipe's ``reference`` mapping (kept in each run's ``config.yaml``, else read
from the recipe file), in the recipes' format:

* ``dense: 92.12`` — the dense accuracy;
* ``<key>: {"<sparsity>": accuracy, ...}`` — one method across sparsities (keys are compared as numbers);
* ``<key>: accuracy`` — one method, whatever its sparsity (single-setting recipes);

where ``<key>`` is the method's label (``GraNet s_i=0.5``, case-insensitive; the older
``granet (initial_sparsity=0.5)`` form too), its name (``bip``), or ``omp`` for one-shot magnitude pruning
after training. ``paper_metric: best_acc|final_acc`` names the accuracy the paper reports (the report's
default ``--metric paper`` uses it). Other scalar entries (``source``, ``metric``, ``*note``,
``best_winning_ticket``) are shown as notes under the table.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import yaml
from rich.table import Table

from ..experiments.layout import RunPaths
from ..experiments.result_row import columns as row_columns, csv_columns
from . import groups
from ..errors import ConfigError, PrunekitError
from ..experiments import load_recipe

METRICS = ("final_acc", "best_acc")
PAPER = "paper"  # the metric the recipe's paper reports (``reference.paper_metric``), else final_acc
_TOL = 5e-5  # sparsities are compared to this many decimals (recipes write 0.7903, 0.9885, ...)


@dataclass
class Entry:
    """One group (every setting but the seed) over its seeds; IMP's intermediate levels are entries too."""

    method: str  # label
    method_name: str
    sparsity: float  # the target (a structured run's: the fraction of channels)
    values: list[float]
    seeds: list[int]
    run_dirs: list[str]
    means: dict[str, float | None]  # every numeric column of the rows, mean over seeds (None: no row has it)
    reference: float | None = None
    series: str = ""
    level: bool = False  # an intermediate IMP level (its own stored row)
    structured: bool = False
    flops_reduction: float | None = None  # dense / sparse inference FLOPs, mean over seeds
    expected_seeds: int = 0  # the most seeds any group of its section has
    family: str | None = None  # the paper it is compared in (groups.FAMILIES)
    name: str = ""  # the method as its paper names it (one colour per name in every figure)

    @property
    def achieved(self) -> float:
        """Measured weight sparsity of the masks, mean over seeds."""
        return self.means["achieved_sparsity"] or 0.0

    @property
    def seconds(self) -> float:
        return self.means["wall_time"] or 0.0

    @property
    def cost(self) -> float | None:
        """Training FLOPs relative to dense training, mean over seeds."""
        return self.means["train_flops_ratio"]

    @property
    def steps(self) -> float | None:
        """Optimizer steps of the whole run, mean over seeds."""
        return self.means["train_steps"]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def diff(self) -> float | None:
        return None if self.reference is None else self.mean - self.reference

    @property
    def short_of_seeds(self) -> bool:
        return self.n < self.expected_seeds


@dataclass
class Section:
    """One recipe × model × dataset: its entries and the recipe's paper-number notes."""

    recipe: str
    model: str
    dataset: str
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metric: str = "final_acc"
    reference: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.recipe}: {self.model} on {self.dataset}"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{self.recipe}-{self.model}-{self.dataset}")

    @property
    def has_reference(self) -> bool:
        return any(e.reference is not None for e in self.entries)

    @property
    def has_cost(self) -> bool:
        return any(e.cost is not None for e in self.entries)


def _old_label(row: dict[str, Any]) -> str:
    """The label older reports (and recipes' reference keys) used: ``granet (initial_sparsity=0.5)``."""
    method = _settings(row)
    extra = [f"{k}={v}" for k, v in method.items() if k not in ("name", "sparsity")]
    return f"{row['method']} ({', '.join(extra)})" if extra else str(row["method"])


def _settings(row: dict[str, Any]) -> dict[str, Any]:
    cfg = row.get("config")
    if isinstance(cfg, str):
        cfg = json.loads(cfg)
    return (cfg or {}).get("method", {})


def recipe_reference(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``reference`` mapping of these rows' recipe (from a run's ``config.yaml``, else the recipe file),
    with the ``models: {<model>: {...}}`` entry of the rows' model merged over it (a recipe whose grid
    spans models keeps each model's paper numbers there)."""
    reference = _recipe_reference(rows)
    models = reference.get("models")
    own = models.get(rows[0].get("model")) if isinstance(models, dict) else None
    reference = {k: v for k, v in reference.items() if k != "models"}
    return {**reference, **own} if isinstance(own, dict) else reference


def _recipe_reference(rows: list[dict[str, Any]]) -> dict[str, Any]:
    for row in rows:
        path = RunPaths.at(row.get("run_dir") or "").config
        if path.is_file():
            try:
                return yaml.safe_load(path.read_text()).get("reference") or {}
            except (yaml.YAMLError, OSError, AttributeError):
                continue

    try:
        return load_recipe(rows[0]["recipe"]).get("reference") or {}
    except PrunekitError:
        return {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def reference_value(reference: dict[str, Any], method: str, settings: dict[str, Any], label: str,
                    sparsity: float) -> float | None:
    """The paper's number for ``method`` (its ``label`` and ``settings``) at ``sparsity``, if the recipe has it."""
    if method == "dense":
        return _number(reference.get("dense"))
    keys = [label, method]
    if method == "magnitude" and settings.get("when", "after") == "after":
        keys.append("omp")
    folded = {str(k).lower(): v for k, v in reference.items()}
    for key in keys:
        value = reference.get(key, folded.get(str(key).lower()))
        if isinstance(value, dict):
            for k, v in value.items():
                s = _number(k)
                if s is not None and abs(s - sparsity) < _TOL:
                    return _number(v)
        elif _number(value) is not None:
            return _number(value)
    return None


def winning_tickets(section: Section, reference: dict[str, Any]) -> list[str]:
    """BiP Table 1's column, computed its way: per method, the sparsest tested sparsity whose mean accuracy
    over seeds is no lower than the dense model's mean (none: "✗"), beside the paper's cell
    (``reference.winning_tickets: {method: {sparsity, acc, std} | null}``)."""
    paper = reference.get("winning_tickets")
    dense = [e for e in section.entries if e.method_name == "dense"]
    if not isinstance(paper, dict) or not dense:
        return []
    bar = dense[0].mean
    folded = {str(k).lower(): v for k, v in paper.items()}
    lines = []
    for label in dict.fromkeys(e.method for e in section.entries if e.method_name != "dense" and not e.level):
        wins = [e for e in section.entries if e.method == label and not e.level and e.mean >= bar]
        ours = max(wins, key=lambda e: e.achieved, default=None)
        text = "✗" if ours is None else f"{100 * ours.achieved:.0f} % ({_mean_std(ours)})"
        cell = folded.get(label.lower(), "—") if label.lower() in folded else "not in the table"
        if isinstance(cell, dict):
            std = f" ± {cell['std']:.2f}" if cell.get("std") is not None else ""
            cell = f"{100 * float(cell['sparsity']):.0f} % ({float(cell['acc']):.2f}{std})"
        elif cell is None:
            cell = "✗"
        lines.append(f"sparsest winning ticket (mean {section.metric.replace('_', ' ')} ≥ our dense {bar:.2f}), "
                     f"{label}: ours {text}, paper {cell}")
    return lines


def reference_notes(reference: dict[str, Any]) -> list[str]:
    """The scalar entries of a reference mapping but ``dense`` (source, metric, notes, numbers without a
    run to compare with) as ``key: text`` lines."""
    return [f"{k}: {' '.join(str(v).split())}" for k, v in reference.items()
            if k != "dense" and not isinstance(v, (dict, list))]


def section_metric(metric: str, reference: dict[str, Any]) -> str:
    """``metric``, or for ``"paper"`` the one the recipe's paper reports (``reference.paper_metric``)."""
    if metric == PAPER:
        named = reference.get("paper_metric")
        return named if named in METRICS else "final_acc"
    return metric


def _point(row: dict[str, Any]) -> float:
    """Where a row sits in its series: its target sparsity; an IMP level's: the level's measured one."""
    key = "achieved_sparsity" if row.get("status") == "level" else "target_sparsity"
    return round(float(row.get(key) or 0.0), 6)


def _latest_per_seed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (group, point, seed): a run stored twice (two recipe names, a rerun) counts once."""
    latest: dict[tuple[str, float, int], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r.get("finished_at") or 0.0):
        latest[(groups.series_key(row), _point(row), int(row["seed"]))] = row
    return list(latest.values())


def _mean(values: list[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _entry(rows: list[dict[str, Any]], label: str, metric: str, reference: dict[str, Any]) -> Entry:
    first = rows[0]
    flat = groups.settings(first)
    level = first.get("status") == "level"
    sparsity = _point(first)
    ref = None
    for key in () if level else (label, groups.full_label(flat), _old_label(first)):
        ref = reference_value(reference, first["method"], _settings(first), key, sparsity)
        if ref is not None:
            break
    reduction = [r["flops"] / r["sparse_flops"] for r in rows if r.get("flops") and r.get("sparse_flops")]
    return Entry(
        method=label, method_name=first["method"], sparsity=sparsity,
        values=[float(r[metric]) for r in rows], seeds=[int(r["seed"]) for r in rows],
        run_dirs=[r.get("run_dir") or "" for r in rows],
        means={c.name: _mean([r.get(c.name) for r in rows]) for c in row_columns() if c.numeric}, reference=ref,
        series=groups.series_key(first), level=level, structured=groups.is_structured(flat),
        flops_reduction=_mean(reduction), family=groups.family(first["method"], flat),
        name=groups.display_name(flat))


def aggregate(rows: list[dict[str, Any]], metric: str = "final_acc") -> list[Section]:
    """Finished rows (and IMP's level rows) → sections → groups of runs that differ only in their seed
    (mean ± std over seeds), labelled by what differs, with paper numbers where known."""
    if metric not in (*METRICS, PAPER):
        raise ConfigError(f"metric={metric!r} not allowed; allowed: {', '.join((*METRICS, PAPER))}")
    by_section: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        status = row.get("status")
        level = status == "level" and (row.get("achieved_sparsity") or 0.0) > 0.0  # level 0 is the dense run
        if status == "finished" or level:
            by_section.setdefault((row["recipe"], row["model"], row["dataset"]), []).append(row)
    sections = []
    for (recipe, model, dataset), srows in sorted(by_section.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        reference = recipe_reference(srows)
        used = section_metric(metric, reference)
        srows = [r for r in _latest_per_seed(srows) if r.get(used) is not None]
        if not srows:
            continue
        section = Section(recipe, model, dataset, notes=reference_notes(reference), metric=used, reference=reference)
        series = {groups.series_key(r): groups.settings(r) for r in srows}
        names = groups.labels(series)
        grouped: dict[tuple[str, float], list[dict[str, Any]]] = {}
        for row in sorted(srows, key=lambda r: (int(r["seed"]), r.get("finished_at") or 0.0)):
            grouped.setdefault((groups.series_key(row), _point(row)), []).append(row)
        entries = [_entry(g, names[key], used, reference) for (key, _), g in grouped.items()]
        expected = max((e.n for e in entries if not e.level), default=0)
        for e in entries:
            e.expected_seeds = expected
        section.entries = sorted(entries, key=lambda e: (e.method_name != "dense", e.method, e.sparsity))
        section.notes += winning_tickets(section, reference)
        sections.append(section)
    return sections


# --- formats ---------------------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str = ".2f", signed: bool = False) -> str:
    if v is None:
        return "—"
    return format(v, ("+" if signed else "") + spec)


def _mean_std(e: Entry) -> str:
    return f"{e.mean:.2f}" if e.std is None else f"{e.mean:.2f} ± {e.std:.2f}"


def columns(section: Section, metric: str | None = None) -> list[str]:
    cols = ["method", "target", "sparsity", "seeds", f"{section.metric.replace('_', ' ')} (mean ± std)"]
    if section.has_reference:
        cols += ["paper", "Δ vs paper"]
    if section.has_cost:
        cols += ["train FLOPs"]
    return cols + ["time (s)"]


def _target(entry: Entry) -> str:
    if entry.level:
        return "level"
    return f"{entry.sparsity:g} ch" if entry.structured else f"{entry.sparsity:g}"


def _seeds(entry: Entry) -> str:
    return f"{entry.n} of {entry.expected_seeds}" if entry.short_of_seeds and not entry.level else str(entry.n)


def cells(section: Section, entry: Entry) -> list[str]:
    """One entry's formatted cells, in :func:`columns` order: the target (``ch``: a fraction of channels;
    ``level``: an intermediate IMP level), the measured weight sparsity of the masks, the seeds (``2 of 3``:
    fewer than the section's other groups), accuracy, paper and difference, training FLOPs × dense."""
    out = [entry.method, _target(entry), f"{entry.achieved:.4f}", _seeds(entry), _mean_std(entry)]
    if section.has_reference:
        out += [_fmt(entry.reference), _fmt(entry.diff, signed=True)]
    if section.has_cost:
        out += ["—" if entry.cost is None else f"{entry.cost:.3g}×"]
    return out + [f"{entry.seconds:.1f}"]


def to_markdown(sections: list[Section], metric: str = "final_acc") -> str:
    parts = []
    for s in sections:
        cols = columns(s, metric)
        lines = [f"### {s.title}", "", "| " + " | ".join(cols) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(s, e)) + " |" for e in s.entries]
        lines += [""] + [f"- {note}" for note in s.notes] + ([""] if s.notes else [])
        parts.append("\n".join(lines))
    return "\n".join(parts)


ENTRY_FIELDS = ["recipe", "model", "dataset", "method", "sparsity", "seeds", "n", "metric", "mean", "std", "paper",
                "diff", "level", "structured", "flops_reduction"]  # then the rows' own columns (csv_columns)


def csv_fields() -> list[str]:
    return ENTRY_FIELDS + [c.csv for c in csv_columns()]


def _round(v: float | None, digits: int = 4) -> float | str:
    return "" if v is None else round(v, digits)


def to_csv(sections: list[Section], metric: str = "final_acc") -> str:
    """One line per entry: what the report computes for it, then each per-run column of the row definition
    that has a CSV name, as its mean over the entry's seeds."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_fields())
    for s in sections:
        for e in s.entries:
            writer.writerow([s.recipe, s.model, s.dataset, e.method, e.sparsity, " ".join(map(str, e.seeds)), e.n,
                             s.metric, round(e.mean, 4), "" if e.std is None else round(e.std, 4),
                             "" if e.reference is None else e.reference, "" if e.diff is None else round(e.diff, 4),
                             int(e.level), int(e.structured), _round(e.flops_reduction),
                             *(_round(e.means[c.name], c.digits) for c in csv_columns())])
    return buf.getvalue()


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "—": "--",
                  "Δ": r"$\Delta$", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


def to_latex(sections: list[Section], metric: str = "final_acc") -> str:
    """One ``table`` per section (booktabs rules), ready to ``\\input``."""
    parts = []
    for s in sections:
        cols = columns(s, metric)
        lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{latex_escape(s.title)}}}",
                 r"\begin{tabular}{l" + "r" * (len(cols) - 1) + "}", r"\toprule",
                 " & ".join(latex_escape(c) for c in cols) + r" \\", r"\midrule"]
        lines += [" & ".join(latex_escape(c) for c in cells(s, e)) + r" \\" for e in s.entries]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
        parts.append("\n".join(lines))
    return "\n".join(parts)


def to_rich(sections: list[Section], metric: str = "final_acc") -> list:
    """One :class:`rich.table.Table` per section, for the terminal."""
    tables = []
    for s in sections:
        table = Table(title=s.title)
        for i, col in enumerate(columns(s, metric)):
            table.add_column(col, justify="left" if i == 0 else "right")
        for e in s.entries:
            table.add_row(*cells(s, e))
        tables.append(table)
    return tables
