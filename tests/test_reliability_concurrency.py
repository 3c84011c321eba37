"""Several processes on one output root, signals, and a full disk.

Overlapping runs share the cached dense pretraining and may share a run directory: both are taken under
an exclusive lock (the second process waits), and stale temporary files are removed only when the
process that wrote them is gone. SIGINT/SIGTERM stop a run with one line; SIGKILL during pruning or
during an export write leaves nothing half-written; the rerun ends bit-identical.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.reliability import record

RECIPE = {
    "name": "conc",
    "seed": 1,
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"name": "sklearn_digits", "batch_size": 32, "test_batch_size": 512, "augment": False},
    "method": {"name": "magnitude", "sparsity": 0.5, "when": "after"},
    "train": {"duration": "2ep", "eval_every": 3},
    "finetune": {"duration": "30it", "eval_every": 3},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# ``python -c KILLER MODE N SIGNAL argv...``: the CLI, after arranging that this very process gets SIGNAL
#   step N     -- at the start of training step N
#   on_init N  -- at the N-th gradient of a pruning-at-init search (DPaI)
#   step2 N    -- the second time a phase starts training step N (IMP: inside level 1)
#   bip N      -- at BiP's bi-level iteration N
#   slow N     -- never; every training step takes N ms longer (a run that lasts while another process starts)
#   replace N  -- before the rename of the N-th atomic write whose target ends with the name in $KILL_NAME
KILLER = r"""
import os, signal, sys
import torch
from prunekit.cli import main
from prunekit.train import trainer
from prunekit.utils import io as pkio

mode, n, sig, argv = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3]), sys.argv[4:]
import time
hit = lambda: os.kill(os.getpid(), sig)
count = [0]
if mode in ("step", "step2"):  # step2: the second time a phase reaches step N (an IMP run's level 1)
    original_step = trainer.Trainer._train_step
    def _train_step(self, x, y, step, autocast):
        if step == n:
            count[0] += 1
            if count[0] == (2 if mode == "step2" else 1):
                hit()
        return original_step(self, x, y, step, autocast)
    trainer.Trainer._train_step = _train_step
elif mode == "bip":  # at BiP's bi-level iteration N
    from prunekit.methods import METHODS
    cls = METHODS.get("bip")
    original_bip = cls.train_step
    def train_step(self, x, y, optimizer, step):
        if step == n:
            hit()
        return original_bip(self, x, y, optimizer, step)
    cls.train_step = train_step
elif mode == "slow":
    original_step = trainer.Trainer._train_step
    def _train_step(self, x, y, step, autocast):
        time.sleep(n / 1000)
        return original_step(self, x, y, step, autocast)
    trainer.Trainer._train_step = _train_step
elif mode == "on_init":
    from prunekit.methods import METHODS
    cls = METHODS.get("dpai")
    original_init, original_grad = cls.on_init, torch.autograd.grad
    def grad(*a, **k):
        count[0] += 1
        if count[0] == n:
            hit()
        return original_grad(*a, **k)
    def on_init(self, ctx):
        torch.autograd.grad = grad
        try:
            return original_init(self, ctx)
        finally:
            torch.autograd.grad = original_grad
    cls.on_init = on_init
elif mode == "replace":
    original_replace = os.replace
    def replace(src, dst, *a, **k):
        if str(dst).endswith(os.environ["KILL_NAME"]):
            count[0] += 1
            if count[0] == n:
                hit()
        return original_replace(src, dst, *a, **k)
    pkio.os.replace = replace
sys.exit(main(argv))
"""


def _recipe(tmp: Path, **changes) -> Path:
    path = tmp / "conc.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, **changes}))
    return path


def _cmd(argv: list[str], kill: tuple = ()) -> list[str]:
    return [sys.executable, "-c", KILLER, *map(str, kill), *argv] if kill else [sys.executable, "-m", "prunekit", *argv]


def _run(argv: list[str], kill: tuple = (), env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(argv, kill), env=env or ENV, capture_output=True, text=True, timeout=300)


def _temps(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.tmp"))


def test_overlapping_runs_started_together_all_finish(tmp_path):
    """Four runs that share one dense pretraining (and two of them one run directory), started 0.3 s apart."""
    recipe, root = _recipe(tmp_path), tmp_path / "runs"
    sparsities = [0.5, 0.7, 0.9, 0.5]
    procs = []
    for s in sparsities:
        procs.append(subprocess.Popen(_cmd(["run", str(recipe), f"output.root={root}", f"method.sparsity={s}", "-q"]),
                                      env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.3)
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0, 0, 0, 0], [o[1][-1500:] for o in outs]
    rows = sqlite3.connect(root / "results.sqlite").execute("SELECT run_id, status FROM runs").fetchall()
    assert len(rows) == 3 and {s for _, s in rows} == {"finished"}
    assert len(list(root.glob("_pretrained/*/summary.json"))) == 1
    assert not _temps(root)
    pre = next(root.glob("_pretrained/*/metrics-pretrain.jsonl")).read_text().splitlines()
    assert len(pre) == len({json.loads(line)["step"] for line in pre})  # trained once, no interleaved lines
    record("fault", "4 `prunekit run`s started 0.3 s apart: 3 sparsities sharing one cached dense pretraining, the "
           "4th the same run as the 1st",
           f"all exit 0; pretraining ran once ({len(pre)} metric lines, none duplicated); 3 store rows, no temporary "
           "file left")


def test_a_second_process_on_one_run_directory_waits(tmp_path):
    recipe, root = _recipe(tmp_path, method={"name": "random", "sparsity": 0.5},
                           train={"duration": "150it", "eval_every": 5}), tmp_path / "runs"
    argv = ["run", str(recipe), f"output.root={root}", "-q"]
    first = subprocess.Popen(_cmd(argv, kill=("slow", 40, "SIGKILL")), env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(root.glob("conc/*/checkpoint-train.pt")) and time.time() < deadline:
        time.sleep(0.05)
    second = _run(argv)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1[-1500:]
    assert second.returncode == 0, second.stderr[-1500:]
    (run_dir,) = root.glob("conc/*")
    lines = (run_dir / "metrics-train.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == list(range(5, 151, 5))
    assert "waiting for" in second.stderr
    wait_line = next(line for line in (second.stdout + second.stderr).splitlines() if "waiting for" in line)
    record("fault", "a second `prunekit run` of a run that another process is training",
           f"it waited (`{wait_line.strip().replace(str(tmp_path), '<tmp>')}`), then skipped the finished run; "
           f"one metric line per segment ({len(steps)}), exit 0 both")


LIVE_WRITER = r"""
import sys, time
from prunekit.utils.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half")
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_stale_temp_cleanup_keeps_a_live_writers_file(tmp_path):
    from prunekit.utils.io import remove_stale_temps

    target = tmp_path / "checkpoint-train.pt"
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(target)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        live = Path(writer.stdout.readline().strip())
        assert live.exists()
        removed = remove_stale_temps(target)
        assert live.exists() and live not in removed
    finally:
        writer.kill()
        writer.wait()
    assert remove_stale_temps(target) == [live] and not live.exists()
    record("fault", "`remove_stale_temps` (run at every phase start) while another live process writes a temporary "
           "checkpoint next to it, then after that process was SIGKILLed",
           "the live writer's temporary file was kept; once its writer was dead it was removed")


def test_store_readers_and_writers_wait_for_a_busy_writer(tmp_path):
    from prunekit.experiments import ResultsStore

    store = ResultsStore(tmp_path / "r.sqlite")
    store.record({"run_id": "a", "method": "dense"})
    holder = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO runs (run_id, method) VALUES ('held', 'x')")
    release = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        assert [r["run_id"] for r in store.rows()] == ["a"]  # a reader does not wait for the writer
        t0 = time.perf_counter()
        store.record({"run_id": "b", "method": "rigl"})  # a writer waits for the lock
        waited = time.perf_counter() - t0
    finally:
        release.join()
        holder.close()
    assert waited > 0.5 and {r["run_id"] for r in store.rows()} == {"a", "held", "b"}
    record("store", "read, then write, the store while another connection holds its write lock for 1 s",
           f"the read returned at once (WAL); the write waited {waited:.1f} s for the lock and succeeded")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of a random-at-init recipe and of a DPaI recipe."""
    tmp = tmp_path_factory.mktemp("reference")
    out = {}
    for name, method in (("random", {"name": "random", "sparsity": 0.5}),
                         ("dpai", {"name": "dpai", "sparsity": 0.8, "steps": 40, "check_every": 10}),
                         ("imp", {"name": "imp", "sparsity": 0.5, "prune_fraction": 0.3}),
                         ("bip", {"name": "bip", "sparsity": 0.5})):
        recipe = tmp / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump({**RECIPE, "name": name, "method": method,
                                          "train": {"duration": "60it", "eval_every": 5}}))
        proc = _run(["run", str(recipe), f"output.root={tmp / 'runs'}", "-q"])
        assert proc.returncode == 0, proc.stderr[-1500:]
        (run_dir,) = (tmp / "runs" / name).iterdir()
        out[name] = (recipe, run_dir)
    return out


def _rows(path: Path) -> list[dict]:
    """A JSON-lines file's records without their wall-clock times."""
    return [{k: v for k, v in json.loads(line).items() if "time" not in k} for line in path.read_text().splitlines()]


def _identical(run_dir: Path, ref_dir: Path) -> dict:
    for name in ("masks.safetensors", "model.safetensors"):
        ref, got = load_file(str(ref_dir / name)), load_file(str(run_dir / name))
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), name
    result, expected = (json.loads((d / "result.json").read_text()) for d in (run_dir, ref_dir))
    assert result["final_acc"] == expected["final_acc"]
    metrics = sorted(p.name for p in ref_dir.glob("*.jsonl"))  # metrics per phase; IMP: its levels
    assert metrics and metrics == sorted(p.name for p in run_dir.glob("*.jsonl"))
    for name in metrics:
        assert _rows(run_dir / name) == _rows(ref_dir / name), name
    assert not _temps(run_dir.parent.parent)
    return result


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupt_during_training_stops_with_one_line_and_resumes(reference, tmp_path, sig, code):
    recipe, ref_dir = reference["random"]
    root = tmp_path / "runs"
    argv = ["run", str(recipe), f"output.root={root}", "-q"]
    proc = _run(argv, kill=("step", 23, sig))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("prunekit: "), proc.stderr[-1500:]
    (run_dir,) = (root / "random").iterdir()
    assert not (run_dir / "result.json").exists()
    rerun = _run(argv)
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    result = _identical(run_dir, ref_dir)
    record("fault", f"{sig} at training step 23 of 60 (checkpoints every 5 steps), then the same command again",
           f"exit {code} with one line (`{lines[0]}`); the rerun resumed from step 20 and ended bit-identical "
           f"(final accuracy {result['final_acc']:.2f}), no temporary file left")


def _killed_and_rerun(reference, tmp_path, name: str, kill: tuple, unwritten: tuple[str, ...]) -> tuple[str, dict]:
    """Run the reference recipe ``name`` killed by ``kill``, check the files in ``unwritten`` are absent,
    run it again and check it ends bit-identical; returns what the rerun said (resumed / redoes) and the result."""
    recipe, ref_dir = reference[name]
    root = tmp_path / "runs"
    argv = ["run", str(recipe), f"output.root={root}"]
    proc = _run(argv, kill=kill)
    assert proc.returncode == -9, proc.stderr[-1500:]
    (run_dir,) = (root / name).iterdir()
    assert not any((run_dir / f).exists() for f in unwritten)
    rerun = _run(argv)
    assert rerun.returncode == 0, rerun.stderr[-1500:]
    said = next((line.strip() for line in rerun.stdout.splitlines() if "resum" in line or "redo" in line), "")
    assert said, rerun.stdout[-1500:]
    return said.replace(str(tmp_path), "<tmp>"), _identical(run_dir, ref_dir)


def test_sigkill_during_the_dpai_search_reruns_it_bit_identical(reference, tmp_path):
    said, result = _killed_and_rerun(reference, tmp_path, "dpai", ("on_init", 20, "SIGKILL"),
                                     ("masks.safetensors", "prune.json"))
    record("fault", "SIGKILL in the 20th of DPaI's 40 search steps (pruning at init), then the same command again",
           f"the rerun said `{said}`, searched again from the start and ended "
           f"bit-identical (masks, weights, metrics; final accuracy {result['final_acc']:.2f})")


@pytest.mark.parametrize("name,kill,where", [
    ("imp", ("step2", 23, "SIGKILL"), "at step 23 of IMP level 1 (after the dense level 0)"),
    ("bip", ("bip", 23, "SIGKILL"), "in BiP's 23rd bi-level iteration"),
])
def test_sigkill_during_pruning_training_resumes_bit_identical(reference, tmp_path, name, kill, where):
    said, result = _killed_and_rerun(reference, tmp_path, name, kill, ("result.json",))
    record("fault", f"SIGKILL {where} (60 steps a phase, checkpoints every 5), then the same command again",
           f"the rerun said `{said}` and ended bit-identical (masks, weights, "
           f"metrics; final accuracy {result['final_acc']:.2f})")


def test_sigkill_during_an_export_write_leaves_no_half_file(reference, tmp_path):
    _, ref_dir = reference["random"]
    out = tmp_path / "out"
    argv = ["export", str(ref_dir), "--out", str(out), "--torch-prune"]
    proc = _run(argv, kill=("replace", 1, "SIGKILL"), env={**ENV, "KILL_NAME": "torch_prune.pt"})
    assert proc.returncode == -9
    assert (out / "pruned.safetensors").is_file() and not (out / "torch_prune.pt").exists()
    assert len(_temps(out)) == 1
    again = _run(argv)
    assert again.returncode == 0, again.stderr[-1500:]
    assert (out / "torch_prune.pt").is_file() and not _temps(out)
    record("fault", "SIGKILL during `prunekit export --torch-prune`, after `torch_prune.pt` was written to its "
           "temporary file but before the rename; then the same command again",
           "no half-written output (the finished files are complete, `torch_prune.pt` absent); the rerun wrote "
           "every file and removed the dead writer's temporary file")


def test_sigkill_during_a_report_write_leaves_no_half_file(reference, tmp_path):
    _, ref_dir = reference["random"]
    store, out = ref_dir.parents[1] / "results.sqlite", tmp_path / "report"
    argv = ["report", "--store", str(store), "--out", str(out), "--no-plots"]
    proc = _run(argv, kill=("replace", 1, "SIGKILL"), env={**ENV, "KILL_NAME": "report.html"})
    assert proc.returncode == -9 and not (out / "report.html").exists() and len(_temps(out)) == 1
    again = _run(argv)
    assert again.returncode == 0, again.stderr[-1500:]
    assert (out / "report.html").is_file() and not _temps(out)
    record("fault", "SIGKILL during `prunekit report`, before `report.html` was renamed into place; then again",
           "no half-written report (tables complete, report.html absent); the rerun wrote it and removed the dead "
           "writer's temporary file")


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_no_half_file(tmp_path, capsys):
    from tests.reliability import cli_error

    recipe = _recipe(tmp_path, model={"name": "mlp", "kwargs": {"hidden": [512]}},
                     method={"name": "random", "sparsity": 0.5}, train={"duration": "4it"})
    with _tmpfs(tmp_path / "disk", "96k") as disk:
        line = cli_error(capsys, ["run", str(recipe), f"output.root={disk}", "-q"])
        files = sorted(p.name for p in disk.rglob("*") if p.is_file())
    assert "no space left" in line
    assert not [f for f in files if f.endswith(".tmp") or f.startswith("checkpoint") or f.endswith(".safetensors")]
    record("fault", "a run whose output.root is a 96 KiB tmpfs (the checkpoint does not fit)",
           f"exit 2: `{line}`; no temporary or partial file left (files there: {', '.join(files) or 'none'})",
           tmp_path=tmp_path)
