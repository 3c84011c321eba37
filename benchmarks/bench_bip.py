"""Cost of one BiP iteration (θ-step + m-step) in units of two plain SGD steps of the same model.

Zhang et al., "Advancing Model Pruning via Bi-level Optimization", NeurIPS 2022. ``resnet20s`` (CIFAR-10
shapes, batch 128 of random data, keep ratio 0.1, the configs' optimizer settings). Each repeat times,
in alternating order within this process: two plain SGD steps (forward, backward, step), one
prunekit BiP iteration (``BiP.train_step``: the defaults, i.e. shared scores, torch<2 zero-grad
semantics and the code's implicit term), and one reference-like iteration (``trainer/bilevel.py``:
four forward and three backward passes, every forward re-sorting all scores for the global top-k).
Printed: min / median / max over repeats of ``BiP / two SGD steps`` and ``reference-like / two SGD
steps``. BiP needs two forward/backward passes per iteration, so 1.0 is the floor; target <= 1.3.
Run: ``python -m benchmarks.bench_bip [--repeats 15 --device cpu --threads 1]`` (on a shared CPU one
thread gives steadier timings: OpenMP threads that wait for each other inflate small element-wise ops).
"""
from __future__ import annotations

import argparse
import statistics

import torch

from .timing import record, record_versus, timed
import torch.nn.functional as F

import prunekit as pk
from prunekit.methods import PruneContext
from prunekit.models import create as create_model


class _TopK(torch.autograd.Function):
    """The reference's ``GetSubnetUnstructured``: full sort, zero the smallest ``int((1-k)·n)``,
    identity backward."""

    @staticmethod
    def forward(ctx, scores, k):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        j = int((1 - k) * scores.numel())
        flat = out.flatten()
        flat[idx[:j]] = 0
        flat[idx[j:]] = 1
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


class ReferenceLike:
    """One ``trainer/bilevel.py`` iteration on a model whose targeted weights are replaced by
    ``θ ⊙ topk(|s|)`` (recomputed from all scores in every forward)."""

    def __init__(self, model: torch.nn.Module, names: list[str], keep: float, lr2: float = 1e-4):
        self.model, self.names, self.keep, self.lr2 = model, names, keep, lr2
        named = dict(model.named_parameters())
        self.weights = [named[n] for n in names]
        self.scores = [torch.nn.Parameter(w.detach().clone()) for w in self.weights]
        params = list(model.parameters()) + self.scores
        self.opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
        self.mask_opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
        self.params = params

    def forward(self, x):
        flat = torch.cat([s.view(-1) for s in self.scores])
        adj = _TopK.apply(flat.abs(), self.keep)
        sizes = [w.numel() for w in self.weights]
        masked = {n: w * a.view_as(w) for n, w, a in zip(self.names, self.weights, adj.split(sizes))}
        return torch.func.functional_call(self.model, {**dict(self.model.named_parameters()), **masked}, (x,))

    def _require(self, scores: bool, weights: bool):
        for s in self.scores:
            s.requires_grad_(scores)
        for w in self.weights:
            w.requires_grad_(weights)

    def step(self, x1, y1, x2, y2):
        self._require(False, True)
        self.opt.zero_grad(set_to_none=False)
        F.cross_entropy(self.forward(x2), y2).backward()
        self.opt.step()
        self._require(True, True)
        self.opt.zero_grad(set_to_none=False)
        F.cross_entropy(self.forward(x1), y1).backward()
        param_grad = torch.cat([p.grad.view(-1).clone() if p.grad is not None else p.new_zeros(p.numel())
                                for p in self.params])
        self._require(True, False)
        self.mask_opt.zero_grad(set_to_none=False)
        F.cross_entropy(self.forward(x1), y1).backward()
        pointer = 0
        for p in self.params:
            n = p.numel()
            if p.grad is not None:
                p.grad.add_(-self.lr2 * p.grad * param_grad[pointer:pointer + n].view_as(p))
            pointer += n
        self.mask_opt.step()
        with torch.no_grad():
            self.forward(x1)  # the logging pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    g = torch.Generator(device="cpu").manual_seed(1)
    data = [(torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 10, (args.batch_size,), generator=g).to(device)) for _ in range(4)]

    plain = create_model("resnet20s", num_classes=10).to(device)
    sgd = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def two_sgd_steps():
        for x, y in data[:2]:
            sgd.zero_grad(set_to_none=True)
            F.cross_entropy(plain(x), y).backward()
            sgd.step()

    model = create_model("resnet20s", num_classes=10).to(device)
    pruner = pk.create("bip", model, sparsity=0.9)
    theta_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    ctx = PruneContext(batches=data[:2], second_batches=data[2:], total_steps=10**6, steps_per_epoch=2)
    pruner.prune(ctx)
    counter = [0]

    def bip_iteration():
        counter[0] += 1
        x, y = data[counter[0] % 2]
        pruner.train_step(x, y, theta_opt, counter[0])

    ref_model = create_model("resnet20s", num_classes=10).to(device)
    ref = ReferenceLike(ref_model, list(pk.create("bip", ref_model, sparsity=0.9).masks.names()), keep=0.1)

    def reference_iteration():
        ref.step(data[0][0], data[0][1], data[2][0], data[2][1])

    sides = {"sgd2": two_sgd_steps, "bip": bip_iteration, "reference": reference_iteration}
    for fn in sides.values():  # warm-up
        for _ in range(2):
            fn()
    ratios: dict[str, list[float]] = {"bip": [], "reference": []}
    raw: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        times = {name: timed(sides[name], device) for name in order}
        for name in ratios:
            ratios[name].append(times[name] / times["sgd2"])
        for name in sides:
            raw[name].append(times[name])
    print(f"resnet20s, batch {args.batch_size}, {device}, {args.repeats} repeats "
          f"(threads: {torch.get_num_threads()}); time / two plain SGD steps:")
    for name, label in (("bip", "prunekit BiP iteration"), ("reference", "reference-like iteration")):
        v = ratios[name]
        print(f"  {label:<26} min {min(v):.3f}x  median {statistics.median(v):.3f}x  max {max(v):.3f}x")
        record("bip", label, v, 1.3 if name == "bip" else None, "two plain SGD steps (resnet20s)")
    vs, quiet = record_versus("bip", "prunekit BiP iteration / reference-like iteration", raw["bip"], raw["reference"],
                              f"the reference-like iteration ({torch.get_num_threads()} thread(s) each)")
    print(f"  prunekit / reference-like    median {vs:.3f}x  quiet-round median {quiet:.3f}x")


if __name__ == "__main__":
    main()
