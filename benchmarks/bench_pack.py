"""Runs per hour: K runs trained as one pack (``PackedTrainer``) against the same K runs one after another.

Each run: a random-ERK mask at its own sparsity (90 / 99 / 99.7 % in turn) and seed, SGD momentum 0.9,
``--steps`` steps at batch 128 over MNIST-shaped synthetic data (uint8 1x28x28, device-resident
``TensorLoader``, own shuffling per seed), one evaluation at the end on 2,000 test images; no
checkpoints. Both sides build their trainers the same way, outside the timed region (loaders included:
each makes its normalised copy of the data there, a fixed cost that a pack shares and that short runs
would otherwise overweight), and time ``fit()`` (training and the evaluation) in the same process at
the same thread count; each round
runs both sides, alternating which goes first. Printed per model and K: the median over rounds of
``sequential time / packed time`` (= packed runs per hour / sequential runs per hour), its min and
max, and the quiet-round median (rounds where both sides are within 1.3x of their fastest).

Also printed per model, the *arithmetic ceiling*: one run's training step (forward, backward, SGD) over
the time its multiply-adds (``torch.utils.flop_counter``) take at the rate of a large matrix product on
the same threads. A pack that removed every other cost and ran the members' arithmetic at that rate
could not gain more than this factor in runs/hour; where the step's own kernels already run near that
rate (LeNet-300-100 on a CPU) the ceiling is near 1.

``--kernels``: the packs' loop kernels (each member's own forward/backward: bit-identical to separate
runs) and, at K = 4 and 8, the stacked kernels (one vmapped model; the GPU default).

Run: ``python -m benchmarks.bench_pack [--repeats 5] [--steps 100] [--threads 1] [--packs 1 2 4 8]``.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import prunekit as pk
from prunekit.data import TensorLoader
from prunekit.data.arrays import ArrayDataset
from prunekit.methods import METHODS, PruneContext, method_config
from prunekit.train import TrainConfig, Trainer
from prunekit.train.packed import PackedTrainer

from .timing import device_parser, quiet_median, record, start, sync, timed

MODELS = {  # name, kwargs, steps multiplier (LeNet-5's step is ~4x LeNet-300-100's)
    "lenet300_100": {},
    "lenet5": {"in_channels": 1, "input_size": 28},
}
TARGETS = {("lenet300_100", 8): 3.0, ("lenet5", 4): 1.5}  # the performance issue's acceptance figures
SPARSITIES = (0.9, 0.99, 0.997)


def mnist_shaped(n: int, seed: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    return ArrayDataset(images, torch.randint(0, 10, (n,), generator=g), 10, f"mnist-shaped/{n}")


class Runs:
    """Builds the trainers of K runs (fresh models, masks and loaders each time)."""

    def __init__(self, model: str, steps: int, device: torch.device):
        self.model, self.steps, self.device = model, steps, device
        self.train = mnist_shaped(128 * steps, 0)
        self.test = mnist_shaped(2000, 1)
        self.cfg = TrainConfig(duration=f"{steps}it", lr=0.05, momentum=0.9, weight_decay=1e-4, eval_every=steps,
                               schedule="cosine")

    def trainers(self, k: int) -> list[Trainer]:
        out = []
        for i in range(k):
            torch.manual_seed(i)
            model = pk.models.create(self.model, num_classes=10, **MODELS[self.model]).to(self.device)
            loader = TensorLoader(self.train, 128, seed=i, device=self.device)
            test = TensorLoader(self.test, 1000, shuffle=False, device=self.device)
            for ld in (loader, test):  # each loader's normalised copy of the data is made outside the timing
                next(iter(ld))
            pruner = METHODS.get("random")(model, method_config({"name": "random", "allocation": "erk",
                                                                  "sparsity": SPARSITIES[i % 3]}))
            pruner.on_init(PruneContext(device=self.device))
            out.append(Trainer(model, loader, test, self.cfg, pruner=pruner, device=self.device))
        return out

    def sequential(self, k: int) -> float:
        trainers = self.trainers(k)
        sync(self.device)
        t0 = time.perf_counter()
        for t in trainers:
            t.fit()
        sync(self.device)
        return time.perf_counter() - t0

    def packed(self, k: int, kernels: str = "loop") -> float:
        trainers = self.trainers(k)
        sync(self.device)
        t0 = time.perf_counter()
        outcomes = PackedTrainer(trainers, kernels).fit()
        sync(self.device)
        elapsed = time.perf_counter() - t0
        bad = [o for o in outcomes if isinstance(o, BaseException)]
        if bad:
            raise bad[0]
        return elapsed


def measure(runs: Runs, k: int, repeats: int, kernels: str) -> tuple[list[float], list[float]]:
    runs.sequential(k), runs.packed(k, kernels)  # warm-up
    seq, packed = [], []
    for r in range(repeats):
        if r % 2:
            packed.append(runs.packed(k, kernels))
            seq.append(runs.sequential(k))
        else:
            seq.append(runs.sequential(k))
            packed.append(runs.packed(k, kernels))
    return seq, packed


def gemm_rate(device: torch.device, n: int = 1024) -> float:
    """FLOP/s of an ``n``-cube float32 matrix product at the current thread count (best of 5)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(5))
    return 2 * n ** 3 / best


def ceiling(model: str, device: torch.device, rate: float, steps: int = 30) -> dict[str, float]:
    """One run's step time, its arithmetic, and step time / (arithmetic at ``rate``): the most any pack
    could gain in runs/hour by removing all the other per-step work (see the module docstring)."""
    torch.manual_seed(0)
    net = pk.models.create(model, num_classes=10, **MODELS[model]).to(device)
    x = torch.randn(128, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    seconds = min(timed(step, device, steps) for _ in range(3))
    return {"step_s": seconds, "flops": flops, "floor_s": flops / rate, "ceiling": seconds * rate / flops}


def main(argv: list[str] | None = None) -> int:
    ap = device_parser(__doc__)
    ap.add_argument("--steps", type=int, default=100, help="training steps per run (LeNet-5: half)")
    ap.add_argument("--packs", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--kernels", nargs="*", default=["loop", "stacked"], choices=["loop", "stacked"],
                    help="pack kernels to time (stacked: K=4 and 8 only)")
    args = ap.parse_args(argv)
    device = start(args)
    print(f"device {device}, torch {torch.__version__}, intra-op threads {torch.get_num_threads()} (both sides), "
          f"repeats {args.repeats}, batch 128, random-ERK masks")
    rate = gemm_rate(device)
    print(f"arithmetic ceiling (a 1024^3 float32 matrix product runs at {rate / 1e9:.1f} GFLOP/s here):")
    for name in args.models:
        c = ceiling(name, device, rate)
        record("pack", f"{name} arithmetic ceiling of any pack", [c["ceiling"]], None,
               "one run's step / its multiply-adds at the large matrix product's rate")
        print(f"  {name:<14} step {c['step_s'] * 1e3:6.2f} ms, {c['flops'] / 1e6:6.1f} MFLOP -> {c['floor_s'] * 1e3:6.2f} ms "
              f"at that rate: a pack can gain at most {c['ceiling']:.2f}x")
    print(f"{'model':<14} {'kernels':<8} {'K':>2} {'steps':>5} {'seq s':>7} {'pack s':>7}   {'min':>6} {'median':>6} "
          f"{'max':>6} {'quiet':>6} {'target':>7}  met")
    for name in args.models:
        steps = args.steps if name == "lenet300_100" else max(1, args.steps // 2)
        runs = Runs(name, steps, device)
        for kernels, k in [(kn, k) for kn in args.kernels for k in args.packs if kn == "loop" or k >= 4]:
            seq, packed = measure(runs, k, args.repeats, kernels)
            ratios = [s / p for s, p in zip(seq, packed)]
            med, quiet = statistics.median(ratios), quiet_median(seq, packed, lambda s, p: s / p)
            target = TARGETS.get((name, k)) if kernels == "loop" else None
            met = "—" if target is None else ("yes" if med >= target else "NO")
            record("pack", f"{name} K={k} {kernels} kernels: runs/hour packed / sequential", ratios, target,
                   "K sequential runs (same process, same threads)", at_least=True, quiet=quiet)
            print(f"{name:<14} {kernels:<8} {k:>2} {steps:>5} {statistics.median(seq):>7.3f} {statistics.median(packed):>7.3f}   "
                  f"{min(ratios):>6.3f} {med:>6.3f} {max(ratios):>6.3f} {quiet:>6.3f} "
                  f"{'—' if target is None else f'>= {target:g}':>7}  {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
