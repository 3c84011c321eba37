"""Sweeps on SLURM through submitit (``pip install 'prunekit[slurm]'``).

Every group of a sweep (runs that share on-disk caches: :func:`prunekit.experiments.sweep.groups_of`)
becomes one job, whose runs execute one after the other, so a shared pretraining is trained once.
A job of ``nodes x tasks_per_node`` tasks trains each run with that many data-parallel processes: the
tasks export the ``torch.distributed`` environment (submitit's ``TorchDistributedEnvironment``) that
:func:`prunekit.distributed.init_from_env` joins, as under torchrun. A preempted or timed-out job is requeued
and resumes its runs from their checkpoints; finished runs are skipped. ``cluster="local"`` runs the
jobs as local processes (submitit's local executor) for trying a sweep without a cluster.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import ExperimentConfig
from .runner import run_experiment
from .sweep import Sweep, group_lock, groups_of


def _submitit():
    try:  # an optional dependency (extra "slurm"), imported when a launcher is used
        import submitit
    except ImportError:
        raise ConfigError("the SLURM launcher needs the submitit package: pip install 'prunekit[slurm]'") from None
    return submitit


class GroupJob:
    """The callable a job runs: the runs of one group, in order (picklable; requeued on preemption)."""

    def __init__(self, configs: list[ExperimentConfig], force: bool = False):
        self.configs, self.force = configs, force

    def __call__(self) -> list[dict[str, Any]]:
        submitit = _submitit()
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # every task trains on cuda:LOCAL_RANK of all visible GPUs (prunekit.distributed.init_from_env)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        group = groups_of(self.configs)[0]
        if env.global_rank == 0:  # rank 0 writes; the other ranks wait for it in the process group
            with group_lock(group):
                return [run_experiment(cfg, force=self.force) for cfg in self.configs]
        return [run_experiment(cfg, force=self.force) for cfg in self.configs]

    def checkpoint(self, *args, **kwargs):
        # preemption / timeout: requeue the same runs; finished ones are skipped, the others resume.
        # Not forced again: a forced rerun that was interrupted resumes like any other.
        return _submitit().helpers.DelayedSubmission(GroupJob(self.configs, force=False))


def submit_sweep(sweep: Sweep, folder: str | os.PathLike, *, cluster: str | None = None, nodes: int = 1,
                 tasks_per_node: int = 1, gpus_per_node: int = 0, cpus_per_task: int | None = None,
                 timeout_min: int = 60, partition: str | None = None, force: bool = False,
                 slurm: dict[str, Any] | None = None) -> list:
    """Submit one job per group of ``sweep``; returns the submitit jobs (``job.result()`` waits).

    ``cluster``: None (SLURM when ``sbatch`` is available, else local), ``"slurm"``, ``"local"`` or
    ``"debug"`` (in this process). ``slurm``: further ``slurm_*`` parameters of submitit's
    ``AutoExecutor.update_parameters`` without the prefix (e.g. ``{"account": "abc", "qos": "high"}``).
    """
    submitit = _submitit()
    for name, value, minimum in (("nodes", nodes, 1), ("tasks_per_node", tasks_per_node, 1),
                                 ("gpus_per_node", gpus_per_node, 0), ("timeout_min", timeout_min, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{name}={value!r} not allowed; allowed: an integer >= {minimum}")
    if gpus_per_node and tasks_per_node > gpus_per_node:
        raise ConfigError(f"tasks_per_node={tasks_per_node} with gpus_per_node={gpus_per_node}: one GPU per task; "
                          f"allowed: tasks_per_node <= gpus_per_node")
    executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster=cluster)
    params: dict[str, Any] = dict(nodes=nodes, tasks_per_node=tasks_per_node, timeout_min=timeout_min,
                                  name=f"prunekit-{sweep.name}")
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if cpus_per_task:
        params["cpus_per_task"] = cpus_per_task
    if partition:
        params["slurm_partition"] = partition
    params.update({f"slurm_{k}": v for k, v in (slurm or {}).items()})
    executor.update_parameters(**params)
    return [executor.submit(GroupJob([sweep.configs[i] for i in group.indices], force))
            for group in groups_of(sweep.configs)]
