"""Cost of the pruning-at-initialization methods in units of one dense training step.

Unit: one SGD step (batch 128, momentum 0.9, cross-entropy) of ``cifar_resnet20`` on random
CIFAR-shaped data. Measured against it, in this process, interleaved, ``--repeats`` times (each ratio
divides by the mean of the dense steps timed just before and just after it); min / median / max printed:

* one DPaI search iteration: ``(t(steps=S) - t(steps=0)) / S``           target <= 0.05
* SNIP on 100 samples (``pk.create("snip", ...).prune``)                  target <= 0.7
* GraSP on 100 samples                                                    target <= 2.0
* SynFlow with 100 rounds                                                 target <= 2.5

Before timing, the masks of every method are checked against the straightforward implementations in
``tests/scoring_reference.py`` (``.grad`` accumulation, in-place linearisation of a copy, per-layer
STE loops): they must be identical. GraSP's default fused kernels round differently from PyTorch's
double backward, so its check runs in float64 (and with ``second_order="autograd"`` in float32); the
float32 entries that differ are counted and printed. Run: ``python -m benchmarks.bench_pai [--repeats 7]``.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from .timing import record, record_versus, timed
import torch.nn.functional as F

import prunekit as pk
from prunekit.methods import PruneContext
from prunekit.methods.dpai import dpai_search, initial_scores
from prunekit.sparsity import erk, num_zeros, select
from tests.scoring_reference import dpai_literal, grasp_literal, snip_literal, synflow_literal

SPARSITY = 0.9
TARGETS = {"dpai_iteration": 0.05, "snip_100": 0.7, "grasp_100": 2.0, "synflow_100": 2.5}


class Bench:
    def __init__(self, device: torch.device, dpai_steps: int):
        torch.manual_seed(0)
        self.device = device
        self.model = pk.models.create("cifar_resnet20", num_classes=10).to(device)
        self.state = copy.deepcopy(self.model.state_dict())
        self.x = torch.randn(128, 3, 32, 32, device=device)
        self.y = torch.randint(0, 10, (128,), device=device)
        self.batches = [(self.x[:100], self.y[:100])]
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        masks = pk.MaskSet.from_model(self.model)
        self.names = masks.names()
        budgets = erk({n: tuple(m.shape) for n, m in masks.items()}, SPARSITY)
        self.zeros = [num_zeros(m.numel(), budgets[n]) for n, m in masks.items()]
        self.scores = initial_scores([m.numel() for m in masks.values()], torch.Generator().manual_seed(0), device)
        self.dpai_steps = dpai_steps

    def fresh(self):
        model = pk.models.create("cifar_resnet20", num_classes=10).to(self.device)
        model.load_state_dict(self.state)
        return model

    def dense_step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()

    def dpai(self, steps: int):
        return dpai_search(self.model, self.names, self.zeros, (3, 32, 32), self.scores, steps=steps)

    def method(self, name: str, **settings):
        model = self.fresh()
        return lambda: pk.create(name, model, sparsity=SPARSITY, **settings).prune(PruneContext(batches=self.batches))

    def literal(self, key: str):
        """The straightforward (reference-like) procedure of ``key`` on a fresh model, scores to masks."""
        model = self.fresh()
        masks = pk.MaskSet.from_model(model)
        if key == "snip_100":
            return lambda: select(snip_literal(model, masks, self.batches), sparsity=SPARSITY, allocation="global")
        if key == "grasp_100":
            return lambda: select(grasp_literal(model, masks, self.batches), sparsity=SPARSITY, allocation="global")
        return lambda: synflow_literal(model, masks, (3, 32, 32), SPARSITY, rounds=100)

    def dpai_literal_iteration(self, steps: int) -> float:
        device = self.device
        t0 = timed(lambda: dpai_literal(self.model, self.names, self.zeros, (3, 32, 32), self.scores, steps=0), device)
        t1 = timed(lambda: dpai_literal(self.model, self.names, self.zeros, (3, 32, 32), self.scores, steps=steps),
                   device)
        return max(t1 - t0, 0.0) / steps

    # --- equality with the straightforward implementations --------------------------------------
    def literal_and_fast(self, name: str, literal, dtype=torch.float32, **settings):
        ref_model = self.fresh().to(dtype).eval()
        batches = [(x.to(dtype), y) for x, y in self.batches]
        expected = select(literal(ref_model, pk.MaskSet.from_model(ref_model), batches), sparsity=SPARSITY, allocation="global")
        fast = pk.create(name, self.fresh().to(dtype), sparsity=SPARSITY, **settings).prune(PruneContext(batches=batches))
        return expected, fast

    def check_masks(self) -> dict[str, bool]:
        out = {}
        expected, fast = self.literal_and_fast("snip", snip_literal)
        out["snip"] = all(torch.equal(fast[n], expected[n]) for n in expected)
        # GraSP's default kernels (plain convolution double backward, BatchNorm folded) round differently
        # from PyTorch's double backward: the masks must be identical in float64, where rounding cannot
        # reorder the scores; in float32 the entries that differ are counted (they sit at the threshold).
        expected, fast = self.literal_and_fast("grasp", grasp_literal, torch.float64)
        out["grasp (float64)"] = all(torch.equal(fast[n], expected[n]) for n in expected)
        expected, fast = self.literal_and_fast("grasp", grasp_literal, second_order="autograd")
        out["grasp (autograd)"] = all(torch.equal(fast[n], expected[n]) for n in expected)
        expected, fast = self.literal_and_fast("grasp", grasp_literal)
        differ = sum(int((fast[n] != expected[n]).sum()) for n in expected)
        print(f"grasp, float32, fused kernels: {differ} of {fast.numel()} mask entries differ from the literal path")
        ref_model = self.fresh()
        expected = synflow_literal(ref_model, pk.MaskSet.from_model(ref_model), (3, 32, 32), SPARSITY, rounds=100)
        fast = pk.create("synflow", self.fresh(), sparsity=SPARSITY).prune(PruneContext(batches=self.batches))
        out["synflow"] = all(torch.equal(fast[n], expected[n]) for n in expected)
        steps = 30
        literal_masks, _ = dpai_literal(self.model, self.names, self.zeros, (3, 32, 32), self.scores, steps=steps)
        out["dpai"] = all(torch.equal(a, b) for a, b in zip(self.dpai(steps).masks(), literal_masks))
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dpai-steps", type=int, default=40)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    b = Bench(device, args.dpai_steps)
    print(f"device {device}, torch {torch.__version__}, intra-op threads {torch.get_num_threads()}, "
          f"sparsity {SPARSITY}, repeats {args.repeats}")

    ok = True
    if not args.skip_check:
        same = b.check_masks()
        for name, equal in same.items():
            print(f"masks {name:<16} identical to the straightforward implementation: {equal}")
        ok = all(same.values())

    for _ in range(2):  # warm-up: allocator, kernels, lazy init
        b.dense_step()
        b.dpai(2)
        b.method("snip")()
        b.method("grasp")()
    timings: dict[str, list[float]] = {k: [] for k in TARGETS}
    versus: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in TARGETS}
    dense: list[float] = []
    for r in range(args.repeats):
        for key in TARGETS:
            before = timed(b.dense_step, device)
            if key == "dpai_iteration":
                def ours() -> float:
                    t0 = timed(lambda: b.dpai(0), device)
                    t1 = timed(lambda: b.dpai(args.dpai_steps), device)
                    return max(t1 - t0, 0.0) / args.dpai_steps

                def theirs() -> float:
                    return b.dpai_literal_iteration(args.dpai_steps)
            else:
                name = {"snip_100": "snip", "grasp_100": "grasp", "synflow_100": "synflow"}[key]
                run = b.method(name, **({} if name == "synflow" else {"num_samples": 100}))
                literal = b.literal(key)
                ours, theirs = (lambda: timed(run, device)), (lambda: timed(literal, device))
            # the reference-like side runs in the same process at the same thread count, in alternating order
            cost, ref = (ours(), theirs()) if r % 2 == 0 else tuple(reversed((theirs(), ours())))
            after = timed(b.dense_step, device)
            dense += [before, after]
            timings[key].append(cost / ((before + after) / 2))
            versus[key][0].append(cost)
            versus[key][1].append(ref)
    print(f"dense step (unit): median {statistics.median(dense) * 1e3:.1f} ms over {len(dense)} steps "
          f"(min {min(dense) * 1e3:.1f}, max {max(dense) * 1e3:.1f})")
    if max(dense) > 1.5 * min(dense):
        print("warning: the dense step varied by more than 1.5x: other load on the machine, ratios unreliable")
    print(f"{'measure':<16} {'min':>7} {'median':>7} {'max':>7} {'target':>7}  met")
    for key, ratios in timings.items():
        med = statistics.median(ratios)
        record("pai", key, ratios, TARGETS[key], "dense steps of cifar_resnet20 (batch 128)")
        print(f"{key:<16} {min(ratios):>7.3f} {med:>7.3f} {max(ratios):>7.3f} {TARGETS[key]:>7.2f}  "
              f"{'yes' if med <= TARGETS[key] else 'NO'}")
    print(f"time / the reference-like procedure's ({torch.get_num_threads()} thread(s) each, paired rounds):")
    for key, (ours_t, ref_t) in versus.items():
        vs, quiet = record_versus("pai", f"{key} / reference-like", ours_t, ref_t,
                                  f"the straightforward procedure ({torch.get_num_threads()} thread(s) each)")
        print(f"{key:<16} median {vs:.3f}  quiet-round median {quiet:.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
