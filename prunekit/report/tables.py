"""Result tables: mean ± std over seeds by method and sparsity, with the paper's numbers side by side.

Rows come from the results store (finished runs only). A *section* is one recipe × model × dataset; an
*entry* is one method setting (``method_label``: the method and its non-default settings) at one target
sparsity, aggregated over seeds (sample standard deviation, n - 1; none for a single seed).

Paper numbers come from the recipe's ``reference`` mapping (kept in each run's ``config.yaml``, else read
from the recipe file), in the recipes' format:

* ``dense: 92.12`` — the dense accuracy;
* ``<key>: {"<sparsity>": accuracy, ...}`` — one method across sparsities (keys are compared as numbers);
* ``<key>: accuracy`` — one method, whatever its sparsity (single-setting recipes);

where ``<key>`` is the method's label (``"magnitude (when=after)"``), its name (``bip``), or ``omp`` for
one-shot magnitude pruning after training. Other scalar entries (``source``, ``metric``, ``*note``,
``best_winning_ticket``) are shown as notes under the table.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METRICS = ("final_acc", "best_acc")
_TOL = 5e-5  # sparsities are compared to this many decimals (recipes write 0.7903, 0.9885, ...)


@dataclass
class Entry:
    """One method setting at one sparsity, over seeds."""

    method: str  # label
    method_name: str
    sparsity: float
    values: list[float]
    seeds: list[int]
    run_dirs: list[str]
    achieved: float
    seconds: float
    reference: float | None = None

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


@dataclass
class Section:
    """One recipe × model × dataset: its entries and the recipe's paper-number notes."""

    recipe: str
    model: str
    dataset: str
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.recipe}: {self.model} on {self.dataset}"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{self.recipe}-{self.model}-{self.dataset}")

    @property
    def has_reference(self) -> bool:
        return any(e.reference is not None for e in self.entries)


def _label(row: dict[str, Any]) -> str:
    from ..cli import method_label

    return method_label(row)


def _settings(row: dict[str, Any]) -> dict[str, Any]:
    cfg = row.get("config")
    if isinstance(cfg, str):
        cfg = json.loads(cfg)
    return (cfg or {}).get("method", {})


def recipe_reference(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``reference`` mapping of these rows' recipe: from a run's ``config.yaml``, else the recipe file."""
    for row in rows:
        path = Path(row.get("run_dir") or "") / "config.yaml"
        if path.is_file():
            try:
                return yaml.safe_load(path.read_text()).get("reference") or {}
            except (yaml.YAMLError, OSError, AttributeError):
                continue
    from ..errors import PrunekitError
    from ..experiments import load_recipe

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
    for key in keys:
        value = reference.get(key)
        if isinstance(value, dict):
            for k, v in value.items():
                s = _number(k)
                if s is not None and abs(s - sparsity) < _TOL:
                    return _number(v)
        elif _number(value) is not None:
            return _number(value)
    return None


def reference_notes(reference: dict[str, Any]) -> list[str]:
    """The scalar entries of a reference mapping but ``dense`` (source, metric, notes, numbers without a
    run to compare with) as ``key: text`` lines."""
    return [f"{k}: {' '.join(str(v).split())}" for k, v in reference.items()
            if k != "dense" and not isinstance(v, (dict, list))]


def aggregate(rows: list[dict[str, Any]], metric: str = "final_acc") -> list[Section]:
    """Finished rows → sections of entries (mean ± std over seeds), with paper numbers where known."""
    if metric not in METRICS:
        from ..errors import ConfigError

        raise ConfigError(f"metric={metric!r} not allowed; allowed: {', '.join(METRICS)}")
    by_section: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "finished" and row.get(metric) is not None:
            by_section.setdefault((row["recipe"], row["model"], row["dataset"]), []).append(row)
    sections = []
    for (recipe, model, dataset), srows in sorted(by_section.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        reference = recipe_reference(srows)
        section = Section(recipe, model, dataset, notes=reference_notes(reference))
        entries: dict[tuple[str, float], Entry] = {}
        for row in sorted(srows, key=lambda r: (r["seed"], r.get("finished_at") or 0)):
            label, sparsity = _label(row), round(float(row["target_sparsity"] or 0.0), 6)
            entry = entries.get((label, sparsity))
            if entry is None:
                ref = reference_value(reference, row["method"], _settings(row), label, sparsity)
                entry = entries[(label, sparsity)] = Entry(label, row["method"], sparsity, [], [], [], 0.0, 0.0, ref)
            entry.values.append(float(row[metric]))
            entry.seeds.append(int(row["seed"]))
            entry.run_dirs.append(row.get("run_dir") or "")
            k = entry.n  # running means of the achieved sparsity and the wall time
            entry.achieved += ((row.get("achieved_sparsity") or 0.0) - entry.achieved) / k
            entry.seconds += ((row.get("wall_time") or 0.0) - entry.seconds) / k
        section.entries = sorted(entries.values(), key=lambda e: (e.method_name != "dense", e.method, e.sparsity))
        sections.append(section)
    return sections


# --- formats ---------------------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str = ".2f", signed: bool = False) -> str:
    if v is None:
        return "—"
    return format(v, ("+" if signed else "") + spec)


def _mean_std(e: Entry) -> str:
    return f"{e.mean:.2f}" if e.std is None else f"{e.mean:.2f} ± {e.std:.2f}"


def columns(section: Section, metric: str) -> list[str]:
    cols = ["method", "sparsity", "seeds", f"{metric.replace('_', ' ')} (mean ± std)"]
    if section.has_reference:
        cols += ["paper", "Δ vs paper"]
    return cols + ["time (s)"]


def cells(section: Section, entry: Entry) -> list[str]:
    """One entry's formatted cells, in :func:`columns` order."""
    out = [entry.method, f"{entry.sparsity:g}", str(entry.n), _mean_std(entry)]
    if section.has_reference:
        out += [_fmt(entry.reference), _fmt(entry.diff, signed=True)]
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


CSV_FIELDS = ["recipe", "model", "dataset", "method", "sparsity", "achieved_sparsity", "seeds", "n", "metric",
              "mean", "std", "paper", "diff", "time_s"]


def to_csv(sections: list[Section], metric: str = "final_acc") -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for s in sections:
        for e in s.entries:
            writer.writerow([s.recipe, s.model, s.dataset, e.method, e.sparsity, round(e.achieved, 6),
                             " ".join(map(str, e.seeds)), e.n, metric, round(e.mean, 4),
                             "" if e.std is None else round(e.std, 4), "" if e.reference is None else e.reference,
                             "" if e.diff is None else round(e.diff, 4), round(e.seconds, 3)])
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
    from rich.table import Table

    tables = []
    for s in sections:
        table = Table(title=s.title)
        for i, col in enumerate(columns(s, metric)):
            table.add_column(col, justify="left" if i == 0 else "right")
        for e in s.entries:
            table.add_row(*cells(s, e))
        tables.append(table)
    return tables
