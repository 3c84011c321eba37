"""Progress reporting for runs: a no-op default and a rich terminal reporter (bars with ETA)."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    """Receives run events; the default ignores them (library use, ``--quiet``). ``context`` is said in
    every line of the phase it is set for (``IMP level 3/11, sparsity 0.4880``)."""

    context: str = ""

    def message(self, text: str) -> None:
        pass

    @contextlib.contextmanager
    def task(self, description: str) -> Iterator[Callable[[int, int], None]]:
        """A pruning search: shown while it runs, timed when it ends. Yields ``progress(done, total)``
        for its rounds or steps (a method passes it on as ``PruneContext.progress``)."""
        yield lambda done, total: None

    def phase_start(self, phase: str, total_steps: int, done: int = 0) -> None:
        pass

    def progress(self, step: int, total: int) -> None:
        pass

    def evaluation(self, record: dict[str, Any]) -> None:
        pass

    def phase_end(self, phase: str, summary: dict[str, Any]) -> None:
        pass


class RichReporter(Reporter):
    """A progress bar per phase (steps, elapsed, ETA) and one line per finished phase;
    ``verbose`` also prints every evaluation."""

    def __init__(self, console, verbose: bool = False):
        self.console = console
        self.verbose = verbose
        self._columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                         TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self._progress_cls = Progress
        self._bar = None
        self._task = None

    def _name(self, phase: str) -> str:
        return f"{phase} ({self.context})" if self.context else phase

    def message(self, text: str) -> None:
        self.console.print(text, markup=False)

    @contextlib.contextmanager
    def task(self, description: str) -> Iterator[Callable[[int, int], None]]:
        if not description:
            yield lambda done, total: None
            return
        t0 = time.perf_counter()
        with self.console.status(f"  {description} ...", spinner="dots") as status:
            def progress(done: int, total: int) -> None:
                elapsed = time.perf_counter() - t0
                eta = f", ETA {elapsed / done * (total - done):.0f} s" if done else ""
                status.update(f"  {description}: {done}/{total}{eta}")

            yield progress
        self.console.print(f"  {description}: done in {time.perf_counter() - t0:.1f} s", markup=False)

    def phase_start(self, phase: str, total_steps: int, done: int = 0) -> None:
        self._bar = self._progress_cls(*self._columns, console=self.console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(f"  {self._name(phase)}", total=total_steps, completed=done)

    def progress(self, step: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def evaluation(self, record: dict[str, Any]) -> None:
        if self.verbose:
            sp = f" sparsity {record['sparsity']:.4f}" if "sparsity" in record else ""
            self.console.print(f"  {self._name(record['phase'])}: step {record['step']} epoch {record['epoch']:.2f} "
                               f"loss {record['train_loss']:.4f} test acc {record['test_acc']:.2f}{sp}", markup=False)

    def phase_end(self, phase: str, summary: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self.console.print(f"  {self._name(phase)}: final acc {summary['final_acc']:.2f}, best {summary['best_acc']:.2f}, "
                           f"{summary['steps']} steps, {summary['wall_time']:.1f} s", markup=False)
