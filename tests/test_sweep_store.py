"""The results store under concurrent sweep workers: WAL, waits instead of "database is locked", one row per
run id however often or concurrently it is recorded, a killed writer leaves it consistent, old stores migrate."""
import multiprocessing as mp
import os
import signal
import sqlite3

from prunekit.experiments.store import COLUMNS, ResultsStore

from tests.reliability import record


def _writer(path, worker, n, barrier):
    store = ResultsStore(path)
    barrier.wait()  # start together: maximal contention, including on the schema creation
    for i in range(n):
        store.record({"run_id": f"run{i % 25}", "method": f"w{worker}", "seed": i, "final_acc": float(i),
                      "status": "finished", "config": {"i": i}})


def test_concurrent_writers_keep_one_row_per_run_id(tmp_path):
    path = tmp_path / "results.sqlite"
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(path, w, 60, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]  # nobody failed with "database is locked"
    rows = ResultsStore(path).rows()
    assert sorted(r["run_id"] for r in rows) == sorted(f"run{i}" for i in range(25))
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    record("fault", "4 processes record 240 rows (25 run ids) into one results store at the same moment",
           f"all exit 0 (no 'database is locked'); {len(rows)} rows, one per run id; journal WAL; "
           "integrity_check ok")


def test_record_replaces_the_row_of_its_run_id(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.record({"run_id": "a", "status": "failed", "error": "NaN at step 3"})
    store.record({"run_id": "b", "status": "finished", "final_acc": 90.0})
    store.record({"run_id": "a", "status": "finished", "final_acc": 91.5, "config": {"seed": 1}})
    rows = {r["run_id"]: r for r in store.rows()}
    assert len(rows) == 2
    assert rows["a"]["status"] == "finished" and rows["a"]["final_acc"] == 91.5 and rows["a"]["error"] is None
    assert rows["a"]["config"] == '{"seed": 1}'
    assert store.get("b")["final_acc"] == 90.0 and store.get("zzz") is None
    assert [r["run_id"] for r in store.rows("status = ?", ("finished",))] == ["b", "a"]  # in finishing order


def _killed_mid_transaction(path):
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT OR REPLACE INTO runs (run_id, status) VALUES ('torn', 'finished')")
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding the write lock, uncommitted


def test_a_writer_killed_mid_transaction_leaves_no_row_and_no_lock(tmp_path):
    path = tmp_path / "r.sqlite"
    store = ResultsStore(path)
    store.record({"run_id": "kept", "status": "finished"})
    p = mp.get_context("fork").Process(target=_killed_mid_transaction, args=(path,))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    store.record({"run_id": "after", "status": "finished"})  # the dead writer's lock is gone
    assert sorted(r["run_id"] for r in store.rows()) == ["after", "kept"]
    record("fault", "SIGKILL a process holding the results store's write lock mid-transaction",
           "its uncommitted row is gone, the lock is released, the next record succeeds; "
           "rows: after, kept")


def test_stores_of_older_versions_gain_new_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, method TEXT, final_acc REAL, finished_at REAL)")
        con.execute("INSERT INTO runs VALUES ('old', 'dense', 97.5, 1.0)")
    store = ResultsStore(path)
    store.record({"run_id": "new", "method": "rigl", "train_flops_ratio": 0.4})
    rows = {r["run_id"]: r for r in store.rows()}
    assert set(rows["old"]) == set(COLUMNS)
    assert rows["old"]["final_acc"] == 97.5 and rows["new"]["train_flops_ratio"] == 0.4


def test_reading_a_missing_store_creates_nothing(tmp_path):
    assert ResultsStore(tmp_path / "none" / "r.sqlite").rows() == []
    assert not (tmp_path / "none").exists()
