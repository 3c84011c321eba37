"""The results store: an SQLite file with one row per finished (or failed) run.

Safe for several processes writing at once (sweep workers, two shells):

* WAL journal: readers never block the writer, and a process killed mid-write leaves the last
  committed state (SQLite rolls back the torn transaction on the next open);
* a busy timeout: a writer waits for another's transaction instead of failing with "database is locked";
* one ``BEGIN IMMEDIATE`` transaction per row, ``INSERT OR REPLACE`` keyed by ``run_id``: recording the
  same run twice (a run killed after its row was written and resumed) replaces the row, never duplicates it;
* schema creation and migration (new columns for stores written by older versions) run inside such a
  transaction too, so concurrent first writers cannot race on ``CREATE``/``ALTER``.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

COLUMNS = {
    "run_id": "TEXT PRIMARY KEY",
    "recipe": "TEXT",
    "method": "TEXT",
    "model": "TEXT",
    "dataset": "TEXT",
    "seed": "INTEGER",
    "target_sparsity": "REAL",
    "achieved_sparsity": "REAL",
    "final_acc": "REAL",
    "best_acc": "REAL",
    "wall_time": "REAL",
    "params": "INTEGER",
    "nonzero_params": "INTEGER",
    "flops": "REAL",
    "sparse_flops": "REAL",
    "train_flops_ratio": "REAL",
    "train_steps": "INTEGER",
    "status": "TEXT",
    "error": "TEXT",
    "run_dir": "TEXT",
    "config": "TEXT",
    "finished_at": "REAL",
}

BUSY_TIMEOUT_S = 60.0


class ResultsStore:
    """``record(row)`` upserts one run's row; ``rows(where, params)`` / ``get(run_id)`` read them back."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._schema_ok = False

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; each write opens its own BEGIN IMMEDIATE
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        con.execute("PRAGMA journal_mode=WAL")
        if not self._schema_ok:
            self._transaction(con, self._ensure_schema)
            self._schema_ok = True
        return con

    @staticmethod
    def _transaction(con: sqlite3.Connection, body) -> None:
        con.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock between writers
        try:
            body(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _ensure_schema(con: sqlite3.Connection) -> None:
        cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
        have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
        for name, kind in COLUMNS.items():  # stores written by older versions gain new columns
            if name not in have:
                con.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")

    def record(self, row: dict[str, Any]) -> None:
        """Insert or replace the row of ``row["run_id"]`` in one transaction."""
        row = dict(row)
        row.setdefault("finished_at", time.time())
        if isinstance(row.get("config"), (dict, list)):
            row["config"] = json.dumps(row["config"], sort_keys=True)
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        if not row.get("run_id"):
            raise ValueError("a result row needs a run_id")
        keys = list(row)
        sql = f"INSERT OR REPLACE INTO runs ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)})"
        con = self._connect()
        try:
            self._transaction(con, lambda c: c.execute(sql, [row[k] for k in keys]))
        finally:
            con.close()

    def rows(self, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
        """Rows in the order they were finished; ``where`` is an SQL condition with ``?`` parameters."""
        if not self.path.exists():
            return []
        con = self._connect()
        con.row_factory = sqlite3.Row
        try:
            query = "SELECT * FROM runs" + (f" WHERE {where}" if where else "") + " ORDER BY finished_at, run_id"
            return [dict(r) for r in con.execute(query, params)]
        finally:
            con.close()

    def get(self, run_id: str) -> dict[str, Any] | None:
        rows = self.rows("run_id = ?", (run_id,))
        return rows[0] if rows else None
