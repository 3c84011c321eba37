"""Cost of dynamic sparse training in units of one dense training step of the same model.

Unit: one SGD step (batch 128, momentum 0.9, cross-entropy) of ``cifar_resnet20`` on random CIFAR-shaped
data and of ``lenet300_100`` on random MNIST-shaped data. Measured in this process, interleaved with the
dense steps, ``--repeats`` times (each ratio divides by the mean of the dense steps timed just before
and just after it); min / median / max printed, at 90% sparsity:

* per-step mask enforcement (GraNet's ``after_optimizer_step`` on a non-update step: weights and
  momentum re-masked)                                                           target <= 0.01
* one GraNet update (global cubic pruning step + per-layer neuroregeneration)  target <= 0.04
* one RigL update (per-layer drop + gradient regrowth)                          target <= 0.04

Each is also timed against the reference's own procedure on the same state (GraNet ``apply_mask``: a
fresh ``w * mask`` per layer plus the momentum; the updates with full sorts) and printed as "x faster".

Before timing, the updates are checked against a straightforward implementation with full stable sorts
(and against GraNet's sort-then-threshold rule for ``counting: reference``) on the same inputs: the masks
must be identical. Run: ``python -m benchmarks.bench_dst [--repeats 7] [--threads 1] [--device cpu]``.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics

import torch

from .timing import record, record_versus, timed
import torch.nn.functional as F

import prunekit as pk
from prunekit.methods import PruneContext
from prunekit.sparsity import num_keep

SPARSITY = 0.9
TARGETS = {"enforce": 0.01, "granet_update": 0.04, "rigl_update": 0.04}
MODELS = {"cifar_resnet20": (3, 32, 32), "lenet300_100": (1, 28, 28)}
STEPS_PER_EPOCH, EPOCHS, DT = 1000, 100, 1000  # a GraNet run of 100k steps, pruning until step 50k
UPDATE_STEP = 20_000


# --- straightforward sort-based updates (the equivalence reference) --------------------------------
def sorted_keep(score, k, eligible):
    flat = torch.where(eligible, score, -torch.inf).reshape(-1)
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return keep.view(score.shape)


def sorted_regrow(weights, masks, grads, fraction, round_up, reference=False):
    out = []
    for w, m, g in zip(weights, masks, grads):
        nnz = int(m.sum())
        n_drop = math.ceil(fraction * nnz) if round_up else int(fraction * nnz)
        if n_drop == 0:
            out.append(m.clone())
            continue
        if reference:  # Masking.magnitude_death: sorted |w|, threshold at zeros + drop - 1, keep >
            ordered = torch.sort(w.abs().reshape(-1)).values
            keep = (w.abs() > ordered[m.numel() - nnz + n_drop - 1]) & m
        else:
            keep = sorted_keep(w.abs(), nnz - n_drop, m)
        out.append(keep | sorted_keep(g.abs(), nnz - int(keep.sum()), ~keep))
    return out


def sorted_granet(weights, masks, grads, sparsity, rho, reference):
    scores = torch.cat([w.abs().reshape(-1) for w in weights])
    total = scores.numel()
    if reference:  # Masking.pruning: topk then keep > the last kept value
        kth = torch.sort(scores, descending=True).values[int(total * (1 - sparsity)) - 1]
        keep = scores > kth
    else:
        eligible = torch.cat([m.reshape(-1) for m in masks])
        keep = sorted_keep(scores, min(num_keep(total, round(sparsity, 12)), int(eligible.sum())), eligible)
    pruned = [k.view(m.shape) for k, m in zip(torch.split(keep, [m.numel() for m in masks]), masks)]
    weights = [w * m for w, m in zip(weights, pruned)]
    return sorted_regrow(weights, pruned, grads, rho, round_up=True, reference=reference)


# --- the setup -----------------------------------------------------------------------------------
class Bench:
    def __init__(self, name: str, device: torch.device):
        torch.manual_seed(0)
        self.device = device
        shape = MODELS[name]
        self.x = torch.randn(128, *shape, device=device)
        self.y = torch.randint(0, 10, (128,), device=device)
        self.dense = pk.models.create(name, num_classes=10).to(device)
        self.dense_opt = torch.optim.SGD(self.dense.parameters(), lr=0.01, momentum=0.9)
        self.granet = self._sparse(name, "granet", initial_sparsity=0.5, update_frequency=DT,
                                   final_prune_epoch=EPOCHS // 2)
        self.rigl = self._sparse(name, "rigl", update_frequency=DT)

    def _sparse(self, name, method, **settings):
        torch.manual_seed(0)
        model = pk.models.create(name, num_classes=10).to(self.device)
        pruner = pk.create(method, model, sparsity=SPARSITY, **settings)
        opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
        pruner.setup(PruneContext(total_steps=STEPS_PER_EPOCH * EPOCHS, steps_per_epoch=STEPS_PER_EPOCH))
        pruner.on_init(PruneContext())
        if method == "granet":  # the masks of the previous pruning step
            pruner.magnitude_prune_(pruner.sparsity_at(UPDATE_STEP - DT))
            pruner.enforce()
            pruner._nnz = pruner._counts()
        for _ in range(2):  # momentum state and dense gradients, as at an update step
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(self.x), self.y).backward()
            opt.step()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(self.x), self.y).backward()
        snapshot = copy.deepcopy((model.state_dict(), opt.state_dict(), pruner.state_dict()))
        return model, pruner, opt, snapshot

    def restore(self, which) -> None:
        model, pruner, opt, (weights, opt_state, pruner_state) = which
        model.load_state_dict(weights)
        opt.load_state_dict(opt_state)
        pruner.load_state_dict(pruner_state)

    def dense_step(self) -> None:
        self.dense_opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.dense(self.x), self.y).backward()
        self.dense_opt.step()

    def enforce(self) -> None:
        self.granet[1].after_optimizer_step(UPDATE_STEP - 1)

    def granet_update(self) -> None:
        self.granet[1]._update(UPDATE_STEP)

    def rigl_update(self) -> None:
        self.rigl[1]._update(UPDATE_STEP)

    def check_equivalence(self) -> None:
        for counting in ("exact", "reference"):
            model, pruner, opt, _ = self.granet
            self.restore(self.granet)
            pruner.config = pruner.config.model_copy(update={"counting": counting})
            ws = [w.detach().clone() for w in pruner.masks.params]
            ms = [m.clone() for m in pruner.masks.values()]
            gs = [w.grad.clone() for w in pruner.masks.params]
            expected = sorted_granet(ws, ms, gs, pruner.sparsity_at(UPDATE_STEP), pruner.prune_rate_at(UPDATE_STEP),
                                     counting == "reference")
            pruner._update(UPDATE_STEP)
            assert all(torch.equal(a, b) for a, b in zip(pruner.masks.values(), expected)), f"granet {counting}"
            pruner.config = pruner.config.model_copy(update={"counting": "exact"})
        model, pruner, opt, _ = self.rigl
        self.restore(self.rigl)
        ws = [w.detach().clone() for w in pruner.masks.params]
        ms = [m.clone() for m in pruner.masks.values()]
        gs = [w.grad.clone() for w in pruner.masks.params]
        expected = sorted_regrow(ws, ms, gs, pruner.drop_fraction_at(UPDATE_STEP), round_up=False)
        pruner._update(UPDATE_STEP)
        assert all(torch.equal(a, b) for a, b in zip(pruner.masks.values(), expected)), "rigl"
        self.restore(self.granet)
        self.restore(self.rigl)


    # --- the reference's procedures, for the "x faster than the reference" column ---------------------
    def reference_enforce(self) -> None:
        """GraNet ``Masking.apply_mask``: per layer ``tensor.data = tensor.data * mask`` and the momentum
        buffer multiplied the same way."""
        model, pruner, opt, _ = self.granet
        for w, m in zip(pruner.masks.params, pruner.masks.values()):
            w.data = w.data * m
            buf = opt.state[w].get("momentum_buffer") if w in opt.state else None
            if buf is not None:
                buf.mul_(m)

    def reference_granet_update(self) -> None:
        model, pruner, opt, _ = self.granet
        ws = [w.detach() for w in pruner.masks.params]
        sorted_granet(ws, list(pruner.masks.values()), [w.grad for w in pruner.masks.params],
                      pruner.sparsity_at(UPDATE_STEP), pruner.prune_rate_at(UPDATE_STEP), reference=True)

    def reference_rigl_update(self) -> None:
        model, pruner, opt, _ = self.rigl
        sorted_regrow([w.detach() for w in pruner.masks.params], list(pruner.masks.values()),
                      [w.grad for w in pruner.masks.params], pruner.drop_fraction_at(UPDATE_STEP), round_up=False)


def ratios(bench: Bench, repeats: int) -> tuple[dict[str, list[float]], dict[str, tuple[list[float], list[float]]]]:
    """Per measure: cost / dense step, and the paired times (prunekit, the reference's procedure) of every
    round, both at this process's thread count, alternating which goes first."""
    device = bench.device
    out = {k: [] for k in TARGETS}
    pairs = {k: ([], []) for k in TARGETS}
    for _ in range(2):
        bench.dense_step()
    for r in range(repeats):
        for key in TARGETS:
            before = timed(bench.dense_step, device)
            if key == "enforce":
                ours = lambda: timed(bench.enforce, device, inner=20)  # noqa: E731
                theirs = lambda: timed(bench.reference_enforce, device, inner=20)  # noqa: E731
            else:
                state = bench.granet if key == "granet_update" else bench.rigl

                def ours(key=key, state=state):
                    t = timed(getattr(bench, key), device)
                    bench.restore(state)
                    return t

                def theirs(key=key, state=state):
                    t = timed(getattr(bench, f"reference_{key}"), device)
                    bench.restore(state)
                    return t
            t, t_ref = (ours(), theirs()) if r % 2 == 0 else tuple(reversed((theirs(), ours())))
            after = timed(bench.dense_step, device)
            out[key].append(t / ((before + after) / 2))
            pairs[key][0].append(t)
            pairs[key][1].append(t_ref)
    return out, pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={args.threads} repeats={args.repeats} sparsity={SPARSITY}")
    for name in args.models:
        bench = Bench(name, device)
        bench.check_equivalence()
        print(f"\n{name}: fast updates == sort-based updates (GraNet exact + reference counting, RigL): ok")
        t_dense = statistics.median(timed(bench.dense_step, device) for _ in range(3))
        print(f"dense step: {t_dense * 1e3:.2f} ms")
        print(f"{'cost / dense step':<18} {'min':>8} {'median':>8} {'max':>8} {'target':>8}         "
              f"time / the reference's: median, quiet median")
        costs, pairs = ratios(bench, args.repeats)
        for key, values in costs.items():
            med = statistics.median(values)
            flag = "ok" if med <= TARGETS[key] else "MISSED"
            record("dst", f"{name} {key}", values, TARGETS[key], f"dense steps of {name} (batch 128)")
            vs, quiet = record_versus("dst", f"{name} {key} / reference procedure", *pairs[key],
                                      f"the reference's procedure on the same state ({args.threads} thread(s) each)")
            print(f"{key:<18} {min(values):>8.4f} {med:>8.4f} {max(values):>8.4f} {TARGETS[key]:>8.2f}  {flag:<6} "
                  f"{vs:>8.3f} {quiet:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
