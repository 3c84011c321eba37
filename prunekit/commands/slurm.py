"""``prunekit slurm SWEEP``: send a sweep's runs to SLURM as submitit jobs (see :mod:`prunekit.experiments.slurm`)."""
from __future__ import annotations

from ..errors import ConfigError
from ..experiments.paths import check_output_dir
from ..experiments.slurm import submit_sweep
from ..experiments.sweep import load_sweep
from ._args import THREADS, int_in
from ._console import make_console


def register(subparsers) -> None:
    p = subparsers.add_parser("slurm", help="submit a sweep to SLURM (submitit): one job per group of runs that "
                                            "share caches, each run data-parallel over the job's tasks")
    p.add_argument("sweep", help="sweep file or recipe name (as for `prunekit sweep`)")
    p.add_argument("overrides", nargs="*", help="key=value settings for every run; grid.KEY=[...] edits the grid")
    p.add_argument("--folder", default="runs/_slurm", help="submitit's logs and job files (default: runs/_slurm)")
    p.add_argument("--nodes", type=int_in(1, 100_000), default=1)
    p.add_argument("--tasks-per-node", type=THREADS, default=1, help="processes per node (one per GPU)")
    p.add_argument("--gpus-per-node", type=int_in(0, 1024), default=0)
    p.add_argument("--cpus-per-task", type=THREADS, default=None)
    p.add_argument("--time", type=int_in(1, 10**6), default=60, dest="timeout_min", help="minutes per job (default: 60)")
    p.add_argument("--partition", default=None)
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="another sbatch setting, e.g. --slurm account=abc --slurm qos=high")
    p.add_argument("--local", action="store_true", help="run the jobs as local processes (submitit's local executor)")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and report their results")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.set_defaults(func=cmd_slurm)


def _slurm_settings(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm {item!r} not allowed; allowed: KEY=VALUE, e.g. account=abc")
        out[key.strip()] = value
    return out


def cmd_slurm(args) -> int:

    check_output_dir(args.folder, "--folder")
    sweep = load_sweep(args.sweep, args.overrides)  # every run validated before anything is submitted
    console = make_console()
    jobs = submit_sweep(sweep, args.folder, cluster="local" if args.local else None, nodes=args.nodes,
                        tasks_per_node=args.tasks_per_node, gpus_per_node=args.gpus_per_node,
                        cpus_per_task=args.cpus_per_task, timeout_min=args.timeout_min, partition=args.partition,
                        force=args.force, slurm=_slurm_settings(args.slurm))
    console.print(f"sweep {sweep.name}: {len(sweep.configs)} runs in {len(jobs)} jobs: "
                  f"{', '.join(str(j.job_id) for j in jobs)} (logs: {args.folder})", markup=False)
    if not args.wait:
        return 0
    failed = 0
    for job in jobs:
        try:
            rows = job.results()[0]  # task 0 (rank 0) of the job
            for row in rows:
                console.print(f"  job {job.job_id}: {row['method']} sparsity={row['target_sparsity']} "
                              f"seed={row['seed']}: {row['status']}, final acc {row['final_acc']:.2f}", markup=False)
        except Exception as e:  # noqa: BLE001 - a failed job is reported, the others still are
            failed += 1
            console.print(f"  job {job.job_id}: FAILED: {str(e).strip().splitlines()[-1]}", markup=False)
    return 1 if failed else 0
