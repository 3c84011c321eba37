"""prunekit's training step against a plain PyTorch loop's step on the same model and data.

prunekit side: ``Trainer.fit`` over a ``TensorLoader`` epoch (batch gathering and normalisation, the
per-step LR scheduler, the loss accumulation and non-finite check without host sync, and
``channels_last`` when the model has convolutions — the default). Its ``wall_time`` excludes the
end-of-segment evaluation and checkpoint. Plain side: ``zero_grad / cross_entropy / backward /
SGD.step`` on pre-made NCHW batches — what a user would write. Both start each repeat with a fresh
SGD (momentum 0.9) on the same model, alternate which side goes first, several repeats; printed:
min / median / max of the per-repeat ratio. Targets: ``<= 1.02`` with ``channels_last`` off (the
harness adds nothing measurable); with the default on for conv nets it is expected well below 1.

Run: ``python -m benchmarks.bench_trainer [--repeats 5] [--threads 1]``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.data import TensorLoader
from prunekit.data.arrays import ArrayDataset
from prunekit.train import TrainConfig, Trainer

from .timing import record, sync

TARGET = 1.02
CASES = {  # model, input shape, steps per repeat (batch 128)
    "cifar_resnet20": ((3, 32, 32), 4),
    "lenet300_100": ((1, 28, 28), 100),
}


class Case:
    def __init__(self, name: str, device: torch.device):
        shape, steps = CASES[name]
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (128 * steps, *shape), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (128 * steps,), generator=g)
        data = ArrayDataset(images, labels, 10, f"random/{name}")
        self.loader = TensorLoader(data, 128, shuffle=False, device=device)
        self.test = [(torch.zeros((2, *shape), device=device), torch.zeros(2, dtype=torch.long, device=device))]
        self.batches = [(x.clone(), y.clone()) for x, y in self.loader]  # the plain loop's pre-made batches
        self.device, self.steps, self.name = device, steps, name
        self.model = pk.models.create(name, num_classes=10).to(device)

    def plain(self) -> float:
        model = self.model.to(memory_format=torch.contiguous_format)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sync(self.device)
        t0 = time.perf_counter()
        for x, y in self.batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
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


def measure(case: Case, repeats: int) -> dict[str, list[float]]:
    ratios: dict[str, list[float]] = {"default": [], "nchw": []}
    for setting, key in ((None, "default"), (False, "nchw")):  # warm-up both layouts
        case.plain(), case.prunekit(setting)
    for r in range(repeats):
        for setting, key in ((None, "default"), (False, "nchw")):
            if r % 2:
                ours = case.prunekit(setting)
                plain = case.plain()
            else:
                plain = case.plain()
                ours = case.prunekit(setting)
            ratios[key].append(ours / plain)
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="*", default=list(CASES))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, intra-op threads {torch.get_num_threads()}, "
          f"repeats {args.repeats}, batch 128")
    print(f"{'model':<16} {'layout':<22} {'min':>7} {'median':>7} {'max':>7} {'target':>7}  met")
    for name in args.models:
        ratios = measure(Case(name, device), args.repeats)
        for key, label in (("nchw", "channels_last off"), ("default", "default (auto)")):
            vals = ratios[key]
            med = statistics.median(vals)
            met = "yes" if med <= TARGET else "NO"
            record("trainer", f"{name} {label}", vals, TARGET if key == "nchw" else None,
                   "plain PyTorch loop steps (batch 128)")
            print(f"{name:<16} {label:<22} {min(vals):>7.3f} {med:>7.3f} {max(vals):>7.3f} {TARGET:>7.2f}  {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
