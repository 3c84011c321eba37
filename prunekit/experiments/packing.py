"""``prunekit sweep --pack K``: the runs of a sweep trained up to K at a time as packs.

Every run goes through :func:`~prunekit.experiments.runner.run_experiment` unchanged — its checks, run
directory, pretraining cache, pruning, files and store row are those of an unpacked run. Runs advance in
*lanes* (threads that take turns, one at a time, so the process RNG and the order of every run's
pre-training work are those of a sequential sweep). When a run reaches a training phase, its lane parks
the phase's :class:`~prunekit.train.Trainer` (resumed from its checkpoint if it has one). Once every lane
is parked or done, parked trainers with the same schedule train together as one
:class:`~prunekit.train.packed.PackedTrainer` (up to K per pack), and each lane continues with its own
outcome: the phase's summary, or the exception that stopped that run alone.

A lane runs one cache group at a time (:func:`~prunekit.experiments.sweep.groups_of`: the runs that share
a dense pretraining), so no two lanes ever train the same cached phase. Methods whose training is not
masked SGD with per-step enforcement (:func:`pack_refusal`) are reported in one line each and run
unpacked after the packs.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from ..errors import PackError
from ..train import Trainer
from ..train.packed import PackedTrainer, pack_key

_local = threading.local()

REFUSED = {
    "bip": "its training is a bi-level update of mask scores and weights (its own train_step), not masked SGD",
    "hydra": "its pruning phase optimises importance scores over frozen weights with its own loop, not masked SGD",
}


def pack_refusal(cfg) -> str | None:
    """Why the run of ``cfg`` cannot train packed (None: it can), from its configuration alone."""
    from .lifecycles import facts_for  # here, not at the top: runner -> packing -> lifecycles -> runner's helpers

    name = cfg.method_settings.name
    if name in REFUSED:
        return f"{name}: {REFUSED[name]}"
    if facts_for(cfg.method_settings).chained:
        return f"{name}: an IMP chain prunes each level from the previous level's trained weights, one after another"
    if getattr(cfg.method_settings, "retrain_steps", None):  # LAP's iterative rounds
        return f"{name} with retrain_steps: every pruning round starts a fresh optimizer, which a shared one cannot do"
    if cfg.train.compile or (cfg.finetune is not None and cfg.finetune.compile):
        return "train.compile: the members' forwards are not compiled as one pack"
    if cfg.train.amp == "fp16" or (cfg.finetune is not None and cfg.finetune.amp == "fp16"):
        return "train.amp='fp16': one loss scaler would skip every member's step when one overflows"
    return None


def fit_trainer(trainer: Trainer) -> dict[str, Any]:
    """``trainer.fit()``, or, inside a packed sweep's lane, park it until its pack has trained."""
    session = getattr(_local, "session", None)
    if session is None:
        return trainer.fit()
    return session.park(_local.lane, trainer)


class PackSession:
    """Lanes that take turns with the main thread; see the module docstring."""

    def __init__(self, pack: int, on_message: Callable[[str], None] = lambda m: None):
        if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
            raise PackError(f"--pack={pack!r}: allowed: an integer >= 1")
        self.pack = pack
        self.on_message = on_message
        self.cond = threading.Condition()
        self.turn: int | None = None
        self.parked: dict[int, Trainer] = {}
        self.outcomes: dict[int, Any] = {}
        self.done: set[int] = set()
        self.packs: list[int] = []  # size of every pack trained (for reports and tests)

    # --- lane side ----------------------------------------------------------------------------
    def _wait_turn(self, lane: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == lane)

    def _yield_turn(self) -> None:
        with self.cond:
            self.turn = None
            self.cond.notify_all()

    def park(self, lane: int, trainer: Trainer) -> dict[str, Any]:
        trainer.prepare()  # resume here, so that the pack key sees the step it continues from
        with self.cond:
            self.parked[lane] = trainer
            self.turn = None
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == lane)
        outcome = self.outcomes.pop(lane)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _lane(self, lane: int, work: Callable[[], None]) -> None:
        _local.session, _local.lane = self, lane
        self._wait_turn(lane)
        try:
            work()
        finally:
            with self.cond:
                self.done.add(lane)
                self.turn = None
                self.cond.notify_all()

    # --- main side ----------------------------------------------------------------------------
    def _give_turn(self, lane: int) -> None:
        with self.cond:
            self.turn = lane
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn is None)

    def run(self, works: list[Callable[[], None]]) -> None:
        """Run ``works`` (one per lane) to the end, training their parked phases in packs."""
        threads = [threading.Thread(target=self._lane, args=(i, w), name=f"prunekit-pack-lane-{i}", daemon=True)
                   for i, w in enumerate(works)]
        for t in threads:
            t.start()
        for lane in range(len(works)):
            self._give_turn(lane)
        while self.parked:
            parked, self.parked = dict(sorted(self.parked.items())), {}
            for lanes in self._packs(parked):
                self._train([parked[lane] for lane in lanes], lanes)
            for lane in parked:
                self._give_turn(lane)
        for t in threads:
            t.join()

    def _packs(self, parked: dict[int, Trainer]) -> list[list[int]]:
        by_key: dict[tuple, list[int]] = {}
        for lane, trainer in parked.items():
            by_key.setdefault(pack_key(trainer), []).append(lane)
        out = []
        for lanes in by_key.values():
            out += [lanes[i:i + self.pack] for i in range(0, len(lanes), self.pack)]
        return out

    def _train(self, trainers: list[Trainer], lanes: list[int]) -> None:
        self.packs.append(len(trainers))
        try:
            outcomes = PackedTrainer(trainers).fit() if len(trainers) > 1 else [_fit_alone(trainers[0])]
        except PackError as e:  # found on the built trainers (a custom train_step ...): unpacked, said once
            self.on_message(str(e))
            outcomes = [_fit_alone(t) for t in trainers]
        except Exception as e:  # noqa: BLE001 - a bug in the pack fails its members, not the sweep
            outcomes = [e] * len(trainers)
        for lane, outcome in zip(lanes, outcomes):
            self.outcomes[lane] = outcome


def _fit_alone(trainer: Trainer) -> Any:
    try:
        return trainer.fit()
    except Exception as e:  # noqa: BLE001 - delivered to the run's own lane, which raises it
        return e
