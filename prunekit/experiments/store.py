"""The results store: an SQLite file with one row per finished (or failed) run.

Each row is written in one transaction (``INSERT OR REPLACE`` keyed by run id), so a killed writer
leaves the store consistent and a re-run replaces rather than duplicates its row. WAL mode and a busy
timeout let concurrent sweep workers write safely.
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
    "status": "TEXT",
    "error": "TEXT",
    "run_dir": "TEXT",
    "config": "TEXT",
    "finished_at": "REAL",
}


class ResultsStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=60000")
        cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
        have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
        for name, kind in COLUMNS.items():  # stores written by older versions gain new columns
            if name not in have:
                con.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        return con

    def record(self, row: dict[str, Any]) -> None:
        row = dict(row)
        row.setdefault("finished_at", time.time())
        if isinstance(row.get("config"), (dict, list)):
            row["config"] = json.dumps(row["config"], sort_keys=True)
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown result columns: {sorted(unknown)}")
        keys = list(row)
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)})",
                [row[k] for k in keys],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def rows(self, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        con = self._connect()
        con.row_factory = sqlite3.Row
        try:
            query = "SELECT * FROM runs" + (f" WHERE {where}" if where else "") + " ORDER BY finished_at"
            return [dict(r) for r in con.execute(query, params)]
        finally:
            con.close()

    def get(self, run_id: str) -> dict[str, Any] | None:
        rows = self.rows("run_id = ?", (run_id,))
        return rows[0] if rows else None
