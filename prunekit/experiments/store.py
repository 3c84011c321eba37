"""The results store: an SQLite file with one row per finished (or failed) run.

Safe for several processes writing at once (sweep workers, two shells):

* WAL journal: readers never block the writer, and a process killed mid-write leaves the last
  committed state (SQLite rolls back the torn transaction on the next open);
* a busy timeout: a writer waits for another's transaction instead of failing with "database is locked";
* one ``BEGIN IMMEDIATE`` transaction per row, ``INSERT OR REPLACE`` keyed by ``run_id``: recording the
  same run twice (a run killed after its row was written and resumed) replaces the row, never duplicates it;
* schema creation and migration (new columns for stores written by older versions) run inside such a
  transaction too, so concurrent first writers cannot race on ``CREATE``/``ALTER``;
* a schema marker (SQLite ``application_id`` + ``user_version``): a file prunekit did not write is refused
  and never modified, and reading opens the file read-only.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import OutputError, StoreError
from .paths import check_output_dir
from .result_row import ResultRow, store_columns

COLUMNS = store_columns()  # {name: SQLite type}, from the one row definition

SCHEMA_VERSION = 1  # bump with a step in MIGRATIONS when a change needs more than new columns
APPLICATION_ID = 0x504B5253  # "PKRS" in the SQLite header: this file is a prunekit results store
BUSY_TIMEOUT_S = 60.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ALLOWED = "allowed: a results.sqlite written by `prunekit run` or `prunekit sweep`, or a path that does not exist yet"


def _use_wal(con: sqlite3.Connection) -> None:
    """Switch the file to WAL (persistent, so only its first writer changes it). Changing the journal mode
    takes an exclusive lock and SQLite reports a concurrent holder as "database is locked" without waiting
    for the busy timeout, so concurrent first writers retry until it."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _add_missing_columns(con: sqlite3.Connection) -> None:
    have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
    for name, kind in COLUMNS.items():
        if name not in have:
            con.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")


# version reached -> the step that brings a store of the version before it there. Version 0 is a store of
# a prunekit that wrote no marker (a `runs` table of known columns); version 1 marks it and adds the columns
# it lacks. New columns alone need no step: every writer adds the missing ones (_add_missing_columns).
MIGRATIONS = {1: _add_missing_columns}


class ResultsStore:
    """``record(row)`` upserts one run's row; ``rows(where, params)`` / ``get(run_id)`` read them back.

    Only a file prunekit wrote is opened: its SQLite header carries :data:`APPLICATION_ID` and the schema
    version (``user_version``); a store of an older prunekit without the marker is recognised by its ``runs``
    table. Anything else (another program's database, a corrupt or empty file, a folder, a newer version)
    raises :class:`~prunekit.errors.StoreError` naming the file, and is never modified: reading opens the
    file read-only, and the schema migration (:data:`MIGRATIONS`) runs only in a writer's transaction.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._schema_ok = False

    # --- checks --------------------------------------------------------------------------------------
    def _fail(self, problem: str) -> StoreError:
        return StoreError(f"results store {self.path}: {problem}; {_ALLOWED}")

    def check(self, write: bool = False) -> int | None:
        """The schema version of the store file (None when it does not exist yet); StoreError when it is not
        a prunekit store of a version this one reads. ``write=True`` also checks that it can be created, and
        accepts an SQLite file without tables (what a concurrent first writer leaves until its schema commits).
        Writes nothing."""
        try:
            exists = self.path.exists() or self.path.is_symlink()
            if not exists:
                if write:
                    check_output_dir(self.path.parent, "the results store's folder")
                return None
            if self.path.is_dir():
                raise self._fail("is a directory")
            with open(self.path, "rb") as fh:
                header = fh.read(100)
        except OSError as e:
            raise self._fail(f"cannot be read ({e.strerror})") from None
        except OutputError as e:
            raise self._fail(str(e)) from None
        if not header:
            if write:  # SQLite's new database before its first write (a concurrent first writer's, too)
                return None
            raise self._fail("is an empty file, not a prunekit results store")
        if not header.startswith(_SQLITE_MAGIC) or len(header) < 100:
            raise self._fail("is not a prunekit results store (not an SQLite database)")
        def inspect(con):
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            return (con.execute("PRAGMA application_id").fetchone()[0], con.execute("PRAGMA user_version").fetchone()[0],
                    tables, {r[1] for r in con.execute("PRAGMA table_info(runs)")})

        app_id, version, tables, columns = self._read(inspect)
        if app_id == APPLICATION_ID:
            if version > SCHEMA_VERSION:
                raise StoreError(f"results store {self.path}: schema version {version}, newer than this prunekit "
                                 f"reads ({SCHEMA_VERSION}); allowed: a newer prunekit, or another output.store")
            return version
        if write and app_id == 0 and not tables:  # created by a concurrent first writer, schema not yet committed
            return None
        known = "runs" in tables and "run_id" in columns and set(columns) <= set(COLUMNS)
        if app_id != 0 or not known:
            listed = ", ".join(tables) if tables else "none"
            raise self._fail(f"is not a prunekit results store (application id {app_id:#x}, tables: {listed})")
        return 0  # an older prunekit's store: read as it is, migrated by the next writer

    # --- connections ---------------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def _read(self, body):
        """``body(connection)`` on a read-only connection. With no writer around (no ``-wal`` file) the file
        is opened as immutable, which creates no ``-wal``/``-shm`` files beside it; if a writer appeared
        meanwhile the read is repeated with SQLite's read locks (which need those files)."""
        wal = Path(f"{self.path}-wal")
        for quiet in (not wal.exists(), False):
            stamp = self._stamp()
            flags = "immutable=1" if quiet else "mode=ro"
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?{flags}", uri=True, timeout=BUSY_TIMEOUT_S,
                                  isolation_level=None)
            try:
                con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
                con.row_factory = sqlite3.Row
                out = body(con)
            except sqlite3.DatabaseError as e:
                if quiet and (wal.exists() or self._stamp() != stamp):
                    continue
                raise self._fail(f"is damaged ({e})") from None
            finally:
                con.close()
            if not quiet or (not wal.exists() and self._stamp() == stamp):
                return out
        raise AssertionError("unreachable: the second read takes SQLite's locks")

    def _connect(self) -> sqlite3.Connection:
        """A writing connection; the first one checks the file and creates or migrates the schema."""
        if not self._schema_ok:
            version = self.check(write=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; each write opens its own BEGIN IMMEDIATE
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            _use_wal(con)
            if not self._schema_ok:
                self._transaction(con, lambda c: self._ensure_schema(c, version))
                self._schema_ok = True
        except BaseException:
            con.close()
            raise
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
    def _ensure_schema(con: sqlite3.Connection, version: int | None) -> None:
        """Create the table (a new file) or migrate an older version, in the caller's transaction (so
        concurrent first writers cannot race on ``CREATE``/``ALTER``)."""
        cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
        current = con.execute("PRAGMA user_version").fetchone()[0] if version is not None else SCHEMA_VERSION
        for step in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[step](con)
        _add_missing_columns(con)
        con.execute(f"PRAGMA application_id={APPLICATION_ID}")
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # --- rows ----------------------------------------------------------------------------------------
    def record(self, row: ResultRow | dict[str, Any]) -> None:
        """Insert or replace the row of ``row["run_id"]`` in one transaction."""
        row = row.as_dict() if isinstance(row, ResultRow) else dict(row)
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
        try:
            con = self._connect()
            try:
                self._transaction(con, lambda c: c.execute(sql, [row[k] for k in keys]))
            finally:
                con.close()
        except sqlite3.DatabaseError as e:  # a full disk, a file damaged after the check
            raise self._fail(f"cannot be written ({e})") from None

    def rows(self, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
        """Rows in the order they were finished; ``where`` is an SQL condition with ``?`` parameters.
        Opens the file read-only (a missing file has no rows); columns an older store lacks are None."""
        if self.check() is None:
            return []

        def select(con):
            have = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
            order = ", ".join(c for c in ("finished_at", "run_id") if c in have)
            query = "SELECT * FROM runs" + (f" WHERE {where}" if where else "") + f" ORDER BY {order}"
            return [{**dict.fromkeys(COLUMNS), **dict(r)} for r in con.execute(query, params)]

        return self._read(select)

    def get(self, run_id: str) -> dict[str, Any] | None:
        rows = self.rows("run_id = ?", (run_id,))
        return rows[0] if rows else None
