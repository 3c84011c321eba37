"""Run the CPU benchmark suite and write its ratios, with the machine they came from, to the docs.

Each benchmark runs in its own process (one intra-op thread unless ``--threads``), prints its usual
output, and records every ratio through :func:`benchmarks.timing.record`; this script gathers those
records into a Markdown table (``docs/benchmarks.md`` by default, written atomically) next to the
targets of the performance issue. A benchmark that fails or runs out of its time share is listed as
such; the others are still written. ``make bench`` runs it (about 10-15 minutes on a 2-core CPU).

Run: ``python -m benchmarks.run_all [--quick] [--only pai dst] [--out docs/benchmarks.md]``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (module, arguments, arguments with --quick)
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "loader": ("benchmarks.bench_loader", ["--repeats", "5"], ["--repeats", "2", "--images", "1280"]),
    "trainer": ("benchmarks.bench_trainer", ["--repeats", "12"], ["--repeats", "2"]),
    "pai": ("benchmarks.bench_pai", ["--repeats", "5"], ["--repeats", "1", "--dpai-steps", "5", "--skip-check"]),
    "dst": ("benchmarks.bench_dst", ["--repeats", "7"], ["--repeats", "2"]),
    "bip": ("benchmarks.bench_bip", ["--repeats", "9"], ["--repeats", "2"]),
    "lap": ("benchmarks.bench_lap", ["--repeats", "15"], ["--repeats", "2"]),
    "structured": ("benchmarks.bench_structured", ["--repeats", "15"], ["--repeats", "2"]),
    "pack": ("benchmarks.bench_pack", ["--repeats", "5"], ["--repeats", "1", "--steps", "20", "--packs", "1", "4"]),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {platform.system()} {platform.release()}")


def run_one(name: str, quick: bool, threads: int, results: Path, timeout: float) -> tuple[str, float, str]:
    module, full, short = SUITE[name]
    if not (ROOT / (module.replace(".", "/") + ".py")).exists():
        return "absent", 0.0, ""
    env = dict(os.environ, PRUNEKIT_BENCH_RESULTS=str(results), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", module, *(short if quick else full)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
        return f"timed out after {timeout:.0f} s", time.perf_counter() - t0, out
    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    out = proc.stdout + (("\n" + proc.stderr.strip().splitlines()[-1]) if proc.returncode and proc.stderr.strip() else "")
    return status, time.perf_counter() - t0, out


def render(rows: list[dict], runs: dict[str, tuple[str, float, str]], header: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m benchmarks.run_all`); do not edit by hand. Every figure is a",
        "ratio measured within one process against the unit named in its row (both sides interleaved,",
        "several repeats, median), so it is comparable across machines; absolute times are not. Both sides",
        "of every ratio run at the same intra-op thread count. *Quiet median*: the median over the rounds",
        "where both sides ran within 1.3x of their own fastest round (rounds no other process slowed down),",
        "where the benchmark records pairs.",
        "",
        header,
        "",
        "| benchmark | measure | unit | repeats | min | median | quiet median | max | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "—" if r["target"] is None else f"{'≥' if r.get('at_least') else '≤'} {r['target']:g}"
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        quiet = "—" if r.get("quiet") is None else f"{r['quiet']:.3f}"
        lines.append(f"| {r['bench']} | {r['measure']} | {r['unit']} | {r['repeats']} | {r['min']:.3f} | "
                     f"{r['median']:.3f} | {quiet} | {r['max']:.3f} | {target} | {met} |")
    lines += ["", "| benchmark script | status | wall time |", "|---|---|---|"]
    for name, (status, secs, _) in runs.items():
        lines.append(f"| `{SUITE[name][0]}` | {status} | {secs:.0f} s |")
    lines += ["", "## Raw output", ""]
    for name, (status, _, out) in runs.items():
        if out.strip():
            lines += [f"### {name}", "", "```", out.strip(), "```", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=list(SUITE), default=None)
    ap.add_argument("--quick", action="store_true", help="fewer repeats: a smoke run of the whole suite")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per benchmark (default 1)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed per benchmark script")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args(argv)
    names = args.only or list(SUITE)
    header = (f"Machine: {machine()}. Intra-op threads per benchmark: {args.threads}. "
              f"Date: {dt.date.today().isoformat()}.{' Quick mode (smoke repeats).' if args.quick else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.jsonl"
        results.touch()
        runs = {}
        for name in names:
            print(f"== {name}", flush=True)
            runs[name] = run_one(name, args.quick, args.threads, results, args.timeout)
            print(runs[name][2].rstrip(), f"\n-- {name}: {runs[name][0]} in {runs[name][1]:.0f} s", flush=True)
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    text = render(rows, {n: r for n, r in runs.items() if r[0] != "absent"}, header)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(out.suffix + ".tmp")
    tmp_out.write_text(text, encoding="utf-8")
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0 if all(r[0] in ("ok", "absent") for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
