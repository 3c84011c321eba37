"""Loader overhead: an epoch through ``TensorLoader`` (gather + crop + flip + normalize) plus a training
step per batch, against the same training steps on pre-made batches.

Both sides run in this process, interleaved batch by batch (which side goes first alternates between
repeats), several repeats; the ratio of the medians of the epoch sums is printed (target <= 1.05).
With CUDA every step is synchronised, so the loader's kernels cannot hide behind the previous step:
the ratio is an upper bound of the overhead in a real run. Run: ``python -m benchmarks.bench_loader [--images 5000 --batch 128 --repeats 5]``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from .timing import record, sync
import torch.nn as nn
import torch.nn.functional as F

from prunekit.data import Augment, TensorLoader, get_normalization
from prunekit.data.arrays import ArrayDataset


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ResNet20(nn.Module):
    """Fallback CIFAR ResNet-20 (3 stages × 3 blocks, 16/32/64 channels) if prunekit.models lacks one."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_model(device: torch.device) -> tuple[nn.Module, str]:
    try:
        from prunekit.models import create

        return create("cifar_resnet20", num_classes=10).to(device), "prunekit.models cifar_resnet20"
    except Exception:  # the model zoo may not provide it yet
        return _ResNet20(10).to(device), "benchmark-local ResNet-20"


def crop_variants(device: torch.device, batch: int, repeats: int = 20) -> dict[str, float]:
    """ms per batch of three ways to pad-crop-flip a CIFAR batch; all give identical results."""
    from prunekit.data.augment import pad_crop_flip

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    index = torch.randperm(10000, generator=g)[:batch].to(device)
    offsets = torch.randint(0, 9, (batch, 2), generator=g).to(device)
    flips = (torch.rand(batch, generator=g) < 0.5).to(device)

    def flat_gather():  # one gather with a flat index per output pixel, zero mask afterwards
        rows = offsets[:, :1] - 4 + torch.arange(32, device=device)
        ar = torch.arange(32, device=device)
        cols = offsets[:, 1:] - 4 + torch.where(flips[:, None], 31 - ar, ar)
        mask = (((rows >= 0) & (rows < 32))[:, :, None] & ((cols >= 0) & (cols < 32))[:, None, :]).unsqueeze(1)
        pix = rows.clamp(0, 31)[:, :, None] * 32 + cols.clamp(0, 31)[:, None, :]
        flat = (index * 3072)[:, None, None, None] + (torch.arange(3, device=device) * 1024)[None, :, None, None] \
            + pix[:, None]
        return images.reshape(-1)[flat] * mask

    def grouped():  # pad the batch, then one slice per distinct offset
        x = F.pad(images[index], (4, 4, 4, 4))
        out = torch.empty(batch, 3, 32, 32, dtype=torch.uint8, device=device)
        key = (offsets[:, 0] * 9 + offsets[:, 1]).cpu()
        for k in torch.unique(key).tolist():
            sel = (key == k).nonzero()[:, 0].to(device)
            out[sel] = x[sel, :, k // 9:k // 9 + 32, k % 9:k % 9 + 32]
        return torch.where(flips[:, None, None, None], out.flip(-1), out)

    def unfold():  # prunekit's: pad the batch, index an unfold view of all windows
        return pad_crop_flip(images, index, offsets, flips, 4, "zeros", (32, 32))

    ref = unfold()
    out = {}
    for name, fn in (("unfold (used)", unfold), ("flat gather", flat_gather), ("per-offset slices", grouped)):
        assert torch.equal(fn(), ref)
        times = []
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times) * 1e3
    return out


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    data = ArrayDataset(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8),
                        torch.randint(0, 10, (args.images,)), 10, "random-cifar")
    loader = TensorLoader(data, args.batch, augment=Augment(kind="pad_crop", padding=4, flip=True),
                          normalization=get_normalization("cifar10", "granet"), device=device, seed=0)
    premade = [(x.clone(), y.clone()) for x, y in loader]  # same shapes, already on the device
    model, model_name = make_model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def paired_epoch(epoch: int, loader_first: bool) -> tuple[float, float]:
        """One epoch; batch i is timed as (TensorLoader next + step) and as (step on pre-made batch i),
        back to back, so load changes on a shared machine hit both sums alike."""
        loader.set_epoch(epoch)
        it = iter(loader)
        t_loader = t_pure = 0.0
        for i in range(len(loader)):
            for side in ((0, 1) if loader_first else (1, 0)):
                sync(device)
                t = time.perf_counter()
                if side == 0:
                    x, y = next(it)  # the epoch's plan (order, offsets, flips) is drawn at i == 0
                    step(x, y)
                else:
                    step(*premade[i])
                sync(device)
                if side == 0:
                    t_loader += time.perf_counter() - t
                else:
                    t_pure += time.perf_counter() - t
        return t_loader, t_pure

    def loader_only(epoch: int) -> float:
        loader.set_epoch(epoch)
        sync(device)
        t = time.perf_counter()
        for x, y in loader:
            pass
        sync(device)
        return time.perf_counter() - t

    paired_epoch(0, True)  # warm-up (allocator, kernels)
    with_loader, pure, only = [], [], []
    for r in range(args.repeats):
        a, b = paired_epoch(r + 1, loader_first=r % 2 == 0)
        with_loader.append(a)
        pure.append(b)
        only.append(loader_only(r + 1))
    ratio = statistics.median(with_loader) / statistics.median(pure)
    record("loader", f"{model_name} epoch / pure steps", [a / b for a, b in zip(with_loader, pure)], 1.05,
           "sum of the epoch's pure training steps")
    nb = len(loader)
    print(f"device={device} model={model_name} images={args.images} batch={args.batch} batches/epoch={nb} "
          f"repeats={args.repeats} threads={torch.get_num_threads()}")
    print(f"epoch with TensorLoader (crop+flip+normalize) + step: median {statistics.median(with_loader):.3f} s "
          f"({', '.join(f'{t:.3f}' for t in with_loader)})")
    print(f"sum of the same pure steps on pre-made batches:        median {statistics.median(pure):.3f} s "
          f"({', '.join(f'{t:.3f}' for t in pure)})")
    print(f"loader alone: median {statistics.median(only) * 1e3 / nb:.3f} ms/batch")
    print("crop+flip kernels, median ms per batch: "
          + ", ".join(f"{k} {v:.3f}" for k, v in crop_variants(device, args.batch).items()))
    print(f"ratio (loader+step / pure step) = {ratio:.4f}  (target <= 1.05)")
    return ratio


if __name__ == "__main__":
    main()
