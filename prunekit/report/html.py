"""A self-contained HTML report: one file with the tables, the plots as ``data:`` URIs and a small inline
script that filters sections by dataset and model. No network access: a Content-Security-Policy allows
only inline styles and scripts and ``data:`` images, so a stray external reference fails loudly in the
browser's console instead of silently loading.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from .tables import Section, cells, columns

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 0 1.2em 3em; color: #1d1d1f; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: .6em 0; z-index: 1; }
h1 { font-size: 1.4em; margin: .3em 0; }
h2 { font-size: 1.15em; margin: 1.6em 0 .5em; }
.meta, .notes, figcaption, #shown { color: #555; font-size: .9em; }
label { margin-right: 1.2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e3e3e3; }
th { text-align: left; background: #f6f6f6; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.pos { color: #11703a; } td.neg { color: #a3271b; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; flex: 1 1 480px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""

SCRIPT = """
(function () {
  var selects = Array.prototype.slice.call(document.querySelectorAll("select[data-filter]"));
  var sections = Array.prototype.slice.call(document.querySelectorAll("section.report-section"));
  function apply() {
    var shown = 0;
    sections.forEach(function (s) {
      var ok = selects.every(function (sel) { return !sel.value || s.dataset[sel.dataset.filter] === sel.value; });
      s.hidden = !ok;
      if (ok) { shown += 1; }
    });
    document.getElementById("shown").textContent = shown + " of " + sections.length + " sections shown";
  }
  selects.forEach(function (sel) { sel.addEventListener("change", apply); });
  apply();
})();
"""


@dataclass
class Plot:
    caption: str
    png: bytes
    lead: bool = False  # shown before the section's table (the family figures the report opens with)


@dataclass
class ReportPage:
    """What the page shows: sections (tables), each section's plots (by ``Section.slug``), a subtitle."""

    sections: list[Section]
    plots: dict[str, list[Plot]] = field(default_factory=dict)
    metric: str = "final_acc"
    subtitle: str = ""
    title: str = "prunekit report"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(section: Section, metric: str) -> str:
    cols = columns(section, metric)
    numeric = [i > 0 for i in range(len(cols))]
    head = "".join(f'<th class="{"num" if n else ""}">{_e(c)}</th>' for c, n in zip(cols, numeric))
    body = []
    for entry in section.entries:
        tds = []
        for i, cell in enumerate(cells(section, entry)):
            cls = "num" if numeric[i] else ""
            if cols[i].startswith("Δ") and entry.diff is not None:
                cls += " pos" if entry.diff >= 0 else " neg"
            tds.append(f'<td class="{cls.strip()}">{_e(cell)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _select(name: str, values: list[str]) -> str:
    options = '<option value="">all</option>' + "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
    return f'<label>{name} <select id="filter-{name}" data-filter="{name}">{options}</select></label>'


def _img(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure><img alt="{_e(plot.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(plot.caption)}</figcaption></figure>")


def render(page: ReportPage) -> str:
    """The report as one HTML document (UTF-8 text)."""
    datasets = sorted({s.dataset for s in page.sections})
    models = sorted({s.model for s in page.sections})
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(page.title)}</title><style>{STYLE}</style></head><body>",
        f'<header><h1>{_e(page.title)}</h1><div class="meta">{_e(page.subtitle)}</div>',
        f'<form id="filters">{_select("dataset", datasets)}{_select("model", models)}<span id="shown"></span></form>'
        "</header><main>",
    ]
    if not page.sections:
        parts.append("<p>No finished runs.</p>")
    for s in page.sections:
        parts.append(f'<section class="report-section" id="{_e(s.slug)}" data-dataset="{_e(s.dataset)}" '
                     f'data-model="{_e(s.model)}" data-recipe="{_e(s.recipe)}">')
        parts.append(f"<h2>{_e(s.title)}</h2>")
        plots = page.plots.get(s.slug, [])
        lead = [p for p in plots if p.lead]
        if lead:
            parts.append('<div class="figures">' + "".join(_img(p) for p in lead) + "</div>")
        parts.append(f'<p class="meta">{_e(s.metric.replace("_", " "))}, mean ± std over seeds (sample std); '
                     "sparsity: measured from the masks; a group of runs differs from the others in more than its "
                     "seed</p>")
        parts.append(_table(s, page.metric))
        if s.notes:
            parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in s.notes) + "</ul>")
        rest = [p for p in plots if not p.lead]
        if rest:
            parts.append('<div class="figures">' + "".join(_img(p) for p in rest) + "</div>")
        parts.append("</section>")
    parts.append(f"</main><script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"
