"""``prunekit sweep SWEEP.yaml``: run a grid of experiments (see :mod:`prunekit.experiments.sweep`)."""
from __future__ import annotations

import time

from rich.table import Table

from ..errors import ConfigError
from ..experiments.progress import Reporter
from ..experiments.sweep import load_sweep, run_sweep, store_paths
from ..experiments.sweep_cost import estimate
from ..report.tables import aggregate, to_rich
from ._console import make_console, method_label


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run a grid of runs (methods x sparsities x seeds x ...), N workers, "
                                            "skipping finished runs")
    p.add_argument("sweep", help="sweep file (a recipe with a grid, optional base: and workers:) or recipe name")
    p.add_argument("overrides", nargs="*", help="key=value settings for every run; grid.KEY=[...] edits the grid")
    p.add_argument("--workers", "-j", type=int, default=None, help="worker processes (default: the file's workers, else 1)")
    p.add_argument("--pack", type=int, default=None, metavar="K",
                   help="train up to K runs at a time as one pack in this process (same results and files as "
                        "unpacked; methods that cannot pack say why and run unpacked)")
    p.add_argument("--dry-run", "-n", action="store_true", help="list the runs and their estimated cost, run nothing")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the final one-line summary")
    p.set_defaults(func=cmd_sweep)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _fmt_flops(f: float | None) -> str:
    if f is None:
        return "?"
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if f >= scale:
            return f"{f / scale:.3g} {unit}"
    return f"{f:.3g} FLOP"


def _label(cfg) -> str:
    return method_label({"method": cfg.method_settings.name, "config": {"method": cfg.method}})


def _run_line(cfg) -> str:
    sparsity = cfg.method_settings.sparsity
    return f"{_label(cfg)} sparsity={sparsity} seed={cfg.seed} model={cfg.model.name} data={cfg.data.name}"


def dry_run(sweep, workers: int, console) -> int:

    cost = estimate(sweep.configs)
    table = Table(title=f"sweep {sweep.name} ({sweep.source}): {len(sweep.configs)} runs")
    for col in ("#", "status", "method", "sparsity", "seed", "model", "dataset", "steps", "train FLOPs", "est. time"):
        table.add_column(col, justify="right" if col in ("#", "sparsity", "seed", "steps", "train FLOPs", "est. time")
                         else "left")
    for i, (cfg, run) in enumerate(zip(sweep.configs, cost.runs), 1):
        table.add_row(str(i), run.status, _label(cfg), str(cfg.method_settings.sparsity), str(cfg.seed), cfg.model.name,
                      cfg.data.name, "—" if run.steps is None else f"{run.steps:,}", _fmt_flops(run.flops),
                      _fmt_seconds(run.seconds) + ("*" if run.extrapolated else ""))
    console.print(table)
    counts = {s: sum(r.status == s for r in cost.runs) for s in ("finished", "partial", "pending")}
    steps, flops, seconds = cost.total("steps"), cost.total("flops"), cost.total("seconds")
    console.print(f"{counts['finished']} finished (skipped), {counts['partial']} partial (resume from checkpoint), "
                  f"{counts['pending']} to run; about {'?' if steps is None else f'{steps:,.0f}'} optimizer steps, "
                  f"{_fmt_flops(flops)} of training", markup=False)
    wall = None if seconds is None else seconds / min(workers, max(1, counts["partial"] + counts["pending"]))
    rough = "*" if any(r.extrapolated for r in cost.runs) else ""
    console.print(f"estimated time: {_fmt_seconds(seconds)}{rough} of compute, about {_fmt_seconds(wall)}{rough} with "
                  f"{workers} worker{'s' * (workers != 1)} ({cost.calibration})", markup=False)
    return 0


def cmd_sweep(args) -> int:

    sweep = load_sweep(args.sweep, args.overrides)  # every run validated before any starts
    workers = sweep.workers if args.workers is None else args.workers
    if not 1 <= workers <= 1024:  # checked here, not by argparse: `main` returns 2 rather than exiting

        raise ConfigError(f"--workers={workers}: allowed: an integer in [1, 1024]")
    console = make_console()
    if args.dry_run:
        return dry_run(sweep, workers, console)
    total = len(sweep.configs)
    finished = 0

    def on_event(event) -> None:
        nonlocal finished
        finished += 1
        if args.quiet:
            return
        cfg = sweep.configs[event.index]
        worker = f" [worker {event.worker}]" if event.worker else ""
        if event.status == "failed":
            outcome = f"FAILED: {event.error}"
        else:
            acc = event.row.get("final_acc") if event.row else None
            outcome = f"{event.status}, final acc {acc:.2f}" if acc is not None else event.status
        left = total - finished  # ETA: the mean wall time per run so far, times the runs left
        eta = f", {left} left, ETA {_fmt_seconds((time.perf_counter() - started) / finished * left)}" if left else ""
        console.print(f"[{finished}/{total}]{worker} {_run_line(cfg)}: {outcome} ({event.seconds:.1f} s){eta}",
                      markup=False)

    if not args.quiet:
        packing = f", packs of up to {args.pack}" if args.pack else ""
        console.print(f"sweep {sweep.name}: {total} runs, {workers} worker{'s' * (workers != 1)}{packing}", markup=False)
    started = time.perf_counter()
    events = run_sweep(sweep.configs, workers=workers, force=args.force, on_event=on_event, reporter=Reporter(),
                       on_message=lambda m: console.print(m, markup=False), pack=args.pack)
    rows = [e.row for e in events if e.row is not None]
    if not args.quiet:
        for table in to_rich(aggregate(rows)):
            console.print(table)
    stores = ", ".join(str(p) for p in store_paths(sweep.configs))
    counts = {s: sum(e.status == s for e in events) for s in ("finished", "skipped", "failed")}
    console.print(f"{counts['finished']} runs finished, {counts['skipped']} skipped (finished before), "
                  f"{counts['failed']} failed; results in {stores} (`prunekit report --store ...` for tables, "
                  "plots and HTML)", markup=False)
    return 1 if counts["failed"] else 0
