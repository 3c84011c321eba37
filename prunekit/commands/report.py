"""``prunekit report``: tables (Markdown, CSV, LaTeX), plots (PNG, SVG) and a self-contained HTML report
from the results store (see :mod:`prunekit.report.build`)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..experiments import ResultsStore
from ..experiments.layout import RunPaths
from ..experiments.paths import check_output_dir
from ..experiments.rundir import read_json, read_jsonl
from ..report.tables import to_rich
from ._console import make_console

FORMATS = ("md", "csv", "tex")


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="tables (mean ± std over seeds, paper numbers), plots and an HTML "
                                             "report from the results store")
    p.add_argument("--store", default="runs/results.sqlite", help="results store (default: runs/results.sqlite)")
    p.add_argument("--out", default=None, help="output folder (default: a 'report' folder beside the store)")
    p.add_argument("--recipe", action="append", default=None, help="only this recipe (repeatable)")
    p.add_argument("--dataset", action="append", default=None, help="only this dataset (repeatable)")
    p.add_argument("--model", action="append", default=None, help="only this model (repeatable)")
    p.add_argument("--metric", choices=["paper", "final_acc", "best_acc"], default="paper",
                   help="accuracy to aggregate (default 'paper': the one the recipe's paper reports, "
                        "reference.paper_metric, else final_acc; best_acc counts only epochs at the final sparsity)")
    p.add_argument("--style", choices=["screen", "paper"], default="screen",
                   help="figure geometry: 'paper' writes single-column (3.4 in) figures, 8 pt type")
    p.add_argument("--formats", default="md,csv,tex", help="table files to write (comma list of md, csv, tex)")
    p.add_argument("--no-html", action="store_true", help="skip report.html")
    p.add_argument("--no-plots", action="store_true", help="skip the plots (and the HTML's images)")
    p.add_argument("--run", default=None, metavar="RUN_DIR",
                   help="plot one run instead: its per-layer sparsity and training curves")
    p.set_defaults(func=cmd_report)


def _formats(text: str) -> tuple[str, ...]:
    items = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in items if f not in FORMATS]
    if bad:
        raise ConfigError(f"--formats {','.join(bad)}: allowed: a comma list of {', '.join(FORMATS)}")
    return items


def _select(rows, args):
    for key in ("recipe", "dataset", "model"):
        wanted = getattr(args, key)
        if wanted:
            rows = [r for r in rows if r[key] in wanted]
    return rows


def _check_run_files(run_dir) -> None:
    """The files the plots read, validated (a damaged one is an error naming it, not a silently empty plot)."""
    fix = "rerun the run with --force to rewrite it"
    paths = RunPaths.at(run_dir)
    if paths.mask_report.exists():
        read_json(paths.mask_report, fix=fix)
    for path in sorted(paths.metrics_files()):
        read_jsonl(path, fix=fix)


def _report_run(args) -> int:
    from ..report import plots  # deferred: matplotlib, not needed at CLI start

    run_dir = Path(args.run)
    paths = RunPaths.at(run_dir)
    if not paths.config.is_file():
        raise ConfigError(f"--run {run_dir}: not a run directory (no {paths.config.name}); allowed: "
                          f"runs/<recipe>/<method>-<hash>")
    out = check_output_dir(Path(args.out) if args.out else paths.report, "--out")
    _check_run_files(run_dir)
    written = []
    with plots.style(args.style):
        for name, fig in (("layers", plots.layer_sparsity({run_dir.name: run_dir})),
                          ("curves", plots.training_curves({run_dir.name: run_dir}))):
            if fig is not None:
                plots.save(fig, out / name)
                written += [out / f"{name}.{fmt}" for fmt in plots.FORMATS]
    print("\n".join(f"wrote {p}" for p in written) if written else f"nothing to plot in {run_dir}")
    return 0


def cmd_report(args) -> int:
    from ..report.build import write_report  # deferred: matplotlib, not needed at CLI start

    formats = _formats(args.formats)
    if args.run:
        return _report_run(args)
    store = ResultsStore(args.store)
    if store.check() is None:
        raise ConfigError(f"--store {store.path}: no such results store; allowed: the results.sqlite a "
                          "`prunekit run` or `prunekit sweep` wrote")
    rows = _select(store.rows("status IN ('finished', 'level')"), args)  # IMP's levels are points too
    if not rows:
        print(f"no finished runs in {store.path} match")
        return 0
    out = check_output_dir(Path(args.out) if args.out else store.path.parent / "report", "--out")
    files = write_report(rows, out, metric=args.metric, formats=formats, html=not args.no_html,
                         figures=not args.no_plots, subtitle=f"{len(rows)} stored runs from {store.path}",
                         style=args.style)
    console = make_console()
    for table in to_rich(files.sections):
        console.print(table)
    print(f"report of {len(rows)} runs in {len(files.sections)} section(s) written to {out}/:")
    for path in files.tables:
        print(f"  table  {path}")
    pngs = [p for p in files.figures if p.suffix == ".png"]
    if pngs:
        print(f"  plots  {len(files.figures)} files (PNG + SVG + PDF), e.g. {pngs[0]}")
    if files.html is not None:
        print(f"  html   {files.html}  (open it in a browser: file://{files.html.resolve()})")
    return 0
