"""prunekit's training step against a plain PyTorch loop's step on the same model and data.

prunekit side: ``Trainer.fit`` over a ``TensorLoader`` epoch (batch gathering and normalisation, the
per-step LR scheduler, the loss accumulation and non-finite check without host sync, and
``channels_last`` when the model has convolutions — the default). Its ``wall_time`` excludes the
end-of-segment evaluation and checkpoint. Plain side: ``zero_grad / cross_entropy / backward /
SGD.step`` on pre-made NCHW batches (the same shuffled batches the loader makes) — what a user would
write. LeNet-300-100 runs a full MNIST-sized epoch (60,000 samples, 469 steps), ResNet-20 4 steps.
Both start each repeat with a fresh SGD (momentum 0.9) on the same model; the rounds cycle through
every order of the sides (each side in every position, after every other, equally often); printed:
min / median / quiet-round median / max of the per-repeat ratio.
Target (on the quiet-round median): ``<= 1.02`` with ``channels_last`` off (the harness adds nothing
measurable); with the default on for conv nets it is expected well below 1. A third side, the plain loop
drawing its batches from the same ``TensorLoader``, separates the harness's own per-step work from the
cost of gathering a shuffled batch (which the pre-made batches do not pay).

Run: ``python -m benchmarks.bench_trainer [--repeats 5] [--threads 1]``.
"""
from __future__ import annotations

import itertools
import statistics
import time

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.data import TensorLoader
from prunekit.data.arrays import ArrayDataset
from prunekit.train import TrainConfig, Trainer

from .timing import device_parser, quiet_median, record, start, sync

TARGET = 1.02
CASES = {  # model, input shape, samples per repeat (batch 128): LeNet-300-100 a full MNIST-sized epoch
    "cifar_resnet20": ((3, 32, 32), 512),
    "lenet300_100": ((1, 28, 28), 60000),
}


class Case:
    def __init__(self, name: str, device: torch.device, samples: int | None = None):
        shape, n = CASES[name]
        n = samples or n
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        data = ArrayDataset(images, labels, 10, f"random/{name}")
        self.loader = TensorLoader(data, 128, shuffle=True, device=device)  # shuffled, as in training
        self.test = [(torch.zeros((2, *shape), device=device), torch.zeros(2, dtype=torch.long, device=device))]
        self.loader.set_epoch(0)  # the epoch every Trainer.fit below trains (a fresh trainer starts at step 0)
        self.batches = [(x.clone(), y.clone()) for x, y in self.loader]  # the plain loop's pre-made batches
        self.device, self.steps, self.name = device, len(self.loader), name
        self.model = pk.models.create(name, num_classes=10).to(device)
        self.conv = any(isinstance(m, torch.nn.Conv2d) for m in self.model.modules())

    def plain(self, batches=None) -> float:
        """The plain loop over the pre-made batches (or over ``batches``)."""
        model = self.model.to(memory_format=torch.contiguous_format)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sync(self.device)
        t0 = time.perf_counter()
        for x, y in self.batches if batches is None else batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sync(self.device)
        return (time.perf_counter() - t0) / self.steps

    def plain_loader(self) -> float:
        """The plain loop drawing its batches from the same ``TensorLoader`` epoch (gather included)."""
        self.loader.set_epoch(0)
        return self.plain(self.loader)

    def gather(self) -> float:
        """The loader's epoch alone (batch gather, no training): what the pre-made side does not pay."""
        self.loader.set_epoch(0)
        sync(self.device)
        t0 = time.perf_counter()
        for _ in self.loader:
            pass
        sync(self.device)
        return (time.perf_counter() - t0) / self.steps

    def prunekit(self, channels_last: bool | None) -> float:
        cfg = TrainConfig(duration=f"{self.steps}it", lr=0.01, momentum=0.9, eval_every=self.steps,
                          channels_last=channels_last)
        if channels_last is False:  # the trainer only converts towards NHWC; undo an earlier repeat's
            self.model.to(memory_format=torch.contiguous_format)
        trainer = Trainer(self.model, self.loader, self.test, cfg, device=self.device)
        trainer.fit()
        return trainer.wall_time / self.steps


def rotated(sides: list, r: int) -> list:
    """Round ``r``'s order of ``sides``: the rounds cycle through every permutation, so each side runs
    in every position and after every other side equally often (a side run right after the pre-made
    batches' loop measured up to 10 % slower; a rotation alone would keep that neighbour fixed)."""
    orders = list(itertools.permutations(range(len(sides))))
    return [sides[i] for i in orders[r % len(orders)]]


def measure(case: Case, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per layout, the paired (prunekit, plain) seconds per step of every round; ``loader``: prunekit
    against the plain loop over the same TensorLoader (both gather their batches)."""
    layouts = ((None, "default"), (False, "nchw")) if case.conv else ((False, "nchw"),)
    times: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for _, key in (*layouts, (None, "loader"))}
    for setting, key in layouts:  # warm-up
        case.plain(), case.prunekit(setting)
    case.plain_loader()
    for r in range(repeats):
        for setting, key in layouts:
            sides = [case.plain, lambda: case.prunekit(setting)] + ([case.plain_loader] if key == "nchw" else [])
            got = {fn: fn() for fn in rotated(sides, r)}
            times[key][0].append(got[sides[1]])
            times[key][1].append(got[sides[0]])
            if key == "nchw":
                times["loader"][0].append(got[sides[1]])
                times["loader"][1].append(got[sides[2]])
    return times


def main(argv: list[str] | None = None) -> int:
    ap = device_parser(__doc__)
    ap.add_argument("--models", nargs="*", default=list(CASES))
    ap.add_argument("--samples", type=int, default=None, help="samples per repeat (default: the case's)")
    args = ap.parse_args(argv)
    device = start(args)
    print(f"device {device}, torch {torch.__version__}, intra-op threads {torch.get_num_threads()}, "
          f"repeats {args.repeats}, batch 128")
    print(f"{'model':<16} {'layout':<28} {'steps':>5} {'min':>7} {'median':>7} {'quiet':>7} {'max':>7} {'target':>7}  met")
    for name in args.models:
        case = Case(name, device, args.samples)
        times = measure(case, args.repeats)
        for key, label in (("nchw", "channels_last off"), ("default", "default (auto)"),
                           ("loader", "vs plain loop on the loader")):
            if key not in times or not times[key][0]:
                continue
            ours, plain = times[key]
            vals = [a / b for a, b in zip(ours, plain)]
            med, quiet = statistics.median(vals), quiet_median(ours, plain, lambda a, b: a / b)
            met = "yes" if quiet <= TARGET else "NO"
            unit = (f"plain loop steps over the same TensorLoader (batch 128, {case.steps} steps)" if key == "loader"
                    else f"plain PyTorch loop steps on pre-made batches (batch 128, {case.steps} steps)")
            record("trainer", f"{name} {label}", vals, None if key == "default" else TARGET, unit, quiet=quiet)
            print(f"{name:<16} {label:<28} {case.steps:>5} {min(vals):>7.3f} {med:>7.3f} {quiet:>7.3f} {max(vals):>7.3f} "
                  f"{TARGET:>7.2f}  {met}")
        step = statistics.median(times["nchw"][1])  # the plain loop's step on pre-made batches
        gathers = [case.gather() / step for _ in range(args.repeats)]
        record("trainer", f"{name} batch gather alone", gathers, None,
               f"plain PyTorch loop steps on pre-made batches (batch 128, {case.steps} steps)")
        print(f"{name:<16} {'batch gather alone':<28} {case.steps:>5} {min(gathers):>7.3f} "
              f"{statistics.median(gathers):>7.3f} {'—':>7} {max(gathers):>7.3f} {'—':>7}  —")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
