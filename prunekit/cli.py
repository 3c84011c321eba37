"""The ``prunekit`` command line: run, show, list, results.

User mistakes print one line (``prunekit: error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from typing import Sequence

import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from . import data, models
from .commands import register_all
from .commands._console import make_console, method_label
from .distributed import MaskDivergenceError
from .errors import ConfigError, LayerCollapseError, NumericError, PrunekitError
from .experiments import ResultsStore, configs_from_recipe, recipe_names, run_experiment, store_for
from .experiments.progress import Reporter, RichReporter
from .experiments.result_row import table_columns
from .experiments.runner import run_id
from .methods import METHODS
from .methods.registry import method_settings
from .report.groups import labels, series_key, settings


def results_table(rows: list[dict], title: str = "results", context: bool | Sequence[str] = True,
                  labels: dict[str, str] | None = None):
    """A rich table of result rows, one column per labelled column of the row definition
    (:func:`prunekit.experiments.result_row.table_columns`); ``context``: the recipe/model/dataset columns to show
    (``True``: all, ``False``: none, given in the title); ``labels``: ``{run_id: label}`` instead of
    :func:`method_label`. Numbers never wrap; text folds onto a second line rather than being cut."""
    table = Table(title=title)
    defined = table_columns()
    shown = [c.name for c in defined if c.context] if context is True else list(context or [])
    columns = [c for name in shown for c in defined if c.name == name] + [c for c in defined if not c.context]

    def cell(r: dict, c) -> str:
        if c.name == "method":
            return (labels or {}).get(r["run_id"]) or method_label(r)
        value = r.get(c.name, "")
        return ("—" if value is None else format(value, c.fmt)) if c.fmt else str(value)

    body = [[cell(r, c) for c in columns] for r in rows]
    for i, c in enumerate(columns):
        whole = c.numeric or not (c.context or c.name == "method")
        widest = max([len(c.label), *(len(cells[i]) for cells in body)])
        # numbers and status are never cut; a label keeps its line while there is room (28 characters), else folds
        table.add_column(c.label, justify="right" if c.numeric else "left", no_wrap=whole, overflow="fold",
                         min_width=widest if whole else min(28, widest) if c.name == "method" else None)
    for cells in body:
        table.add_row(*cells)
    return table


def cmd_run(args) -> int:
    run_failures = (NumericError, LayerCollapseError, MaskDivergenceError)  # stored as 'failed' rows

    configs = configs_from_recipe(args.recipe, args.overrides)  # every run validated before any starts
    console = make_console()
    reporter = Reporter() if args.quiet else RichReporter(console, verbose=args.verbose)
    rows, failed = [], 0
    for i, cfg in enumerate(configs, 1):
        if not args.quiet:
            console.print(f"run {i}/{len(configs)} {cfg.name}: method={cfg.method} model={cfg.model.name} "
                          f"data={cfg.data.name} seed={cfg.seed}", markup=False)
        try:
            rows.append(run_experiment(cfg, force=args.force, reporter=reporter))
        except run_failures as e:
            if len(configs) == 1:
                raise
            # the run's failure is stored with it; the grid goes on (as `prunekit sweep` does)
            failed += 1
            print(f"prunekit: run {i}/{len(configs)} failed: {e}", file=sys.stderr)
            row = store_for(cfg).get(run_id(cfg))
            if row is not None:
                rows.append(row)
    store = store_for(configs[0])
    first = configs[0]
    title = f"{first.name}: {first.model.name} on {first.data.name}, {len(rows)} runs (store: {store.path})"
    console.print(results_table(rows, title=title, context=False))
    if failed:
        print(f"prunekit: {failed} of {len(configs)} runs failed (status 'failed' in the store)", file=sys.stderr)
    return 1 if failed else 0


def cmd_show(args) -> int:
    configs = configs_from_recipe(args.recipe, args.overrides)
    docs = [c.model_dump(mode="json") for c in configs]
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


def cmd_list(args) -> int:
    if args.name and "=" in args.name:  # `list` takes no key=value overrides
        raise ConfigError(f"unrecognized arguments: {args.name}")
    if args.kind == "methods" and args.name:
        cls = METHODS.get(args.name)
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        print(f"{args.name}: {doc}")
        for field, kind, default, help_ in method_settings(args.name):
            print(f"  {field} ({kind}, default {default})" + (f"\n      {help_}" if help_ else ""))
        return 0
    if args.name:
        raise ConfigError(f"list {args.kind} takes no name; allowed: `prunekit list methods NAME`")
    if args.kind == "methods":
        names = [f"{n:<14} {METHODS.meta(n).get('family', '')}" for n in METHODS.names()]
    elif args.kind == "models":
        names = [f"{n:<22} {models.info(n).get('source', '')}" for n in models.names()]
    elif args.kind == "datasets":
        names = [f"{n:<16} {data.get_spec(n).description}" for n in data.DATASETS.names()]
    else:
        names = recipe_names()
    print("\n".join(names))
    return 0


def cmd_results(args) -> int:
    store = ResultsStore(args.store)
    rows = store.rows("recipe = ?", (args.recipe,)) if args.recipe else store.rows()
    if not rows:
        print(f"no results in {store.path}")
        return 0

    # fit the terminal: model/dataset columns that are the same for every row go to the title, labels name
    # only what differs
    varying = ["recipe"] + [c for c in ("model", "dataset") if len({r[c] for r in rows}) > 1]
    same = [f"{c} {rows[0][c]}" for c in ("model", "dataset") if c not in varying]
    names = labels({series_key(r): settings(r) for r in rows})
    by_run = {r["run_id"]: names[series_key(r)] for r in rows}
    title = f"{store.path}: {len(rows)} rows" + (f" ({', '.join(same)})" if same else "")
    table = results_table(rows, title=title, context=varying, labels=by_run)
    table.box, table.padding, table.pad_edge = box.SIMPLE_HEAD, (0, 1), False  # thin rules: room for the columns
    table.collapse_padding = True
    Console(highlight=False).print(table)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own convention too)
        self.exit(2, f"prunekit: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="prunekit", description="Neural-network pruning across the training lifecycle.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run a recipe (every grid combination), skipping finished runs")
    r.add_argument("recipe", help="recipe name or YAML path")
    r.add_argument("overrides", nargs="*", help="key=value settings, e.g. method.sparsity=0.9")
    r.add_argument("--force", action="store_true", help="rerun finished runs")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress output, only the final table")
    r.add_argument("--verbose", "-v", action="store_true", help="print every evaluation")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("show", help="print the resolved configuration of a recipe")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_show)
    ls = sub.add_parser("list", help="list registered methods, models, datasets or recipes")
    ls.add_argument("kind", choices=["methods", "models", "datasets", "recipes"])
    ls.add_argument("name", nargs="?", help="with methods: one method's settings, with type, default and help")
    ls.set_defaults(func=cmd_list)
    res = sub.add_parser("results", help="table of finished runs from the results store")
    res.add_argument("--store", default="runs/results.sqlite")
    res.add_argument("--recipe", default=None)
    res.set_defaults(func=cmd_results)

    register_all(sub)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may stand anywhere among the flags
    (``prunekit run quickstart -v seed=5``), as ``parse_intermixed_args`` would allow (which argparse
    does not offer with subcommands)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes = hasattr(args, "overrides")
        bad = [e for e in extra if not (takes and "=" in e and not e.startswith("-"))]
        if bad:
            parser.error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = [*(args.overrides or []), *extra]
    return args


class _Terminated(BaseException):
    """SIGTERM, raised where the process is, so that open atomic writes remove their temporary files."""


def _terminate(signum, frame):
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return args.func(args)
    except PrunekitError as e:
        print(f"prunekit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("prunekit: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("prunekit: terminated (SIGTERM); run the command again to resume", file=sys.stderr)
        return 143
    except OSError as e:  # the file system refused (no space, no permission, read-only)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        print(f"prunekit: error: {e.filename or ''}: {e.strerror}; allowed: a writable output folder with free space",
              file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
