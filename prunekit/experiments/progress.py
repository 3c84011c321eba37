"""Progress reporting for runs: a no-op default and a rich terminal reporter (bars with ETA)."""
from __future__ import annotations

from typing import Any


class Reporter:
    """Receives run events; the default ignores them (library use, ``--quiet``)."""

    def message(self, text: str) -> None:
        pass

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
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = console
        self.verbose = verbose
        self._columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                         TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
        self._progress_cls = Progress
        self._bar = None
        self._task = None

    def message(self, text: str) -> None:
        self.console.print(text, markup=False)

    def phase_start(self, phase: str, total_steps: int, done: int = 0) -> None:
        self._bar = self._progress_cls(*self._columns, console=self.console, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(f"  {phase}", total=total_steps, completed=done)

    def progress(self, step: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def evaluation(self, record: dict[str, Any]) -> None:
        if self.verbose:
            sp = f" sparsity {record['sparsity']:.4f}" if "sparsity" in record else ""
            self.console.print(f"  {record['phase']}: step {record['step']} epoch {record['epoch']:.2f} "
                               f"loss {record['train_loss']:.4f} test acc {record['test_acc']:.2f}{sp}", markup=False)

    def phase_end(self, phase: str, summary: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self.console.print(f"  {phase}: final acc {summary['final_acc']:.2f}, best {summary['best_acc']:.2f}, "
                           f"{summary['steps']} steps, {summary['wall_time']:.1f} s", markup=False)
