"""One result row: the single definition of what a run records.

:class:`ResultRow` declares each column once, with its type and where it shows. From it come the results
store's columns (:func:`store_columns`), the runner's row (``runner._row`` builds a ``ResultRow``), the
``prunekit run``/``results`` table (:func:`table_columns`) and the report CSV's per-run fields, averaged
over seeds (:func:`csv_columns`). A new column is one field here.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any

_SQL = {str: "TEXT", int: "INTEGER", float: "REAL", dict: "TEXT"}  # dict: stored as JSON text


def column(*, key: bool = False, label: str | None = None, fmt: str = "", context: bool = False,
           csv: str | None = None, digits: int = 4) -> Any:
    """A field of :class:`ResultRow`. ``key``: the store's primary key; ``label``: its heading in the CLI table
    (``fmt``: its format spec; ``context``: a recipe/model/dataset column, shown only where rows differ);
    ``csv``: its name in the report CSV, where it is the mean over an entry's seeds rounded to ``digits``."""
    return dataclasses.field(metadata={"key": key, "label": label, "fmt": fmt, "context": context, "csv": csv,
                                       "digits": digits})


@dataclass(frozen=True, kw_only=True)
class ResultRow:
    """What a run records: one row in the results store (and its ``result.json``)."""

    run_id: str = column(key=True)
    recipe: str = column(label="recipe", context=True)
    method: str = column(label="method")  # the CLI table shows the method's label (its settings)
    model: str = column(label="model", context=True)
    dataset: str = column(label="dataset", context=True)
    seed: int = column(label="seed")
    target_sparsity: float = column()
    achieved_sparsity: float = column(label="sparsity", fmt=".4f", csv="achieved_sparsity", digits=6)
    final_acc: float | None = column(label="final %", fmt=".2f")
    best_acc: float | None = column(label="best %", fmt=".2f")
    wall_time: float = column(label="time s", fmt=".1f", csv="time_s", digits=3)
    params: int = column()
    nonzero_params: int = column()
    flops: float = column()
    sparse_flops: float = column()
    # the whole run's training (pretraining, IMP's chain, BiP's bi-level steps) vs one dense training
    train_flops_ratio: float | None = column(csv="train_flops_ratio")
    train_steps: int | None = column(csv="train_steps")
    status: str = column(label="status")
    error: str | None = column()
    run_dir: str = column()
    config: dict[str, Any] = column()

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Column:
    """One column of a row definition, as its consumers see it."""

    name: str
    kind: type  # str, int, float or dict (``X | None`` is its X)
    key: bool
    label: str | None
    fmt: str
    context: bool
    csv: str | None
    digits: int

    @property
    def sql(self) -> str:
        return _SQL[self.kind] + (" PRIMARY KEY" if self.key else "")

    @property
    def numeric(self) -> bool:
        return self.kind in (int, float)


@functools.cache
def columns(row: type = ResultRow) -> tuple[Column, ...]:
    """The columns of a row definition, in declaration order."""
    hints = typing.get_type_hints(row)
    out = []
    for f in dataclasses.fields(row):
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        out.append(Column(f.name, typing.get_origin(kind) or kind, **f.metadata))
        if out[-1].csv is not None and not out[-1].numeric:
            raise TypeError(f"{row.__name__}.{f.name}: a CSV column is a mean over seeds, so it must be a number")
    return tuple(out)


def store_columns(row: type = ResultRow) -> dict[str, str]:
    """``{name: SQLite type}`` of the results store: the row's columns, and the time the store recorded it."""
    return {**{c.name: c.sql for c in columns(row)}, "finished_at": "REAL"}


def table_columns(row: type = ResultRow) -> tuple[Column, ...]:
    """The columns of the CLI's results table (those with a label)."""
    return tuple(c for c in columns(row) if c.label is not None)


def csv_columns(row: type = ResultRow) -> tuple[Column, ...]:
    """The per-run columns of the report CSV (those with a CSV name)."""
    return tuple(c for c in columns(row) if c.csv is not None)
