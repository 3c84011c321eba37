"""LAP scoring cost in units of one Adam training step (batch 60) of the same model, and a check that
the masks equal a straightforward, reference-like computation.

Park et al., "Lookahead: A Far-sighted Alternative of Magnitude-based Pruning", ICLR 2020. For the FCN
(MNIST, target <= 3) and Conv-6 (CIFAR-10 shapes, target <= 0.3): both sides run in this process,
interleaved (which side goes first alternates), several repeats; the ratio per repeat is
``scoring time / Adam step time`` and min / median / max over repeats are printed. "Scoring" is every
layer's LAP score from the model's weights; "prune" adds the per-layer top-k (the whole pruning event
minus writing the masks). The reference-like side builds the neighbour norms with ``repeat`` exactly as
``method/laprune.py`` does, loops over layers and units, and selects with a stable descending sort and
``round((1 - ratio) * surviving)`` as ``method/prune.py: _score_based_mask`` (in float64, like prunekit).
Run: ``python -m benchmarks.bench_lap [--repeats 15 --device cpu]``.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from .timing import record, timed
import torch.nn.functional as F

import prunekit as pk
from prunekit.methods.lap import RATE_TABLES, build_scorer
from prunekit.models import create as create_model

CASES = {"fcn": ((1, 28, 28), 3.0, 7), "conv6": ((3, 32, 32), 0.3, 14)}  # input, target, round


def reference_like_masks(weights: list[torch.Tensor], rates: list[float], t: int) -> list[torch.Tensor]:
    """LAP masks as the reference computes them: explicit ``repeat`` expansions, one branch per layer
    pair type, a loop over the previous layer's channels for the conv->linear flatten, stable sort."""
    w = [x.detach().double() for x in weights]
    masks = []
    for i, cur in enumerate(w):
        prev = torch.ones_like(cur)
        if i > 0:
            sq = w[i - 1] ** 2
            norms = sq.sum(dim=tuple(range(1, sq.dim())))
            if cur.dim() == 4:
                prev = norms.view(1, -1, 1, 1).repeat(cur.size(0), 1, cur.size(2), cur.size(3))
            else:
                per_channel = cur.size(1) // norms.numel()
                expanded = torch.cat([norms[c].repeat(per_channel) for c in range(norms.numel())])
                prev = expanded.view(1, -1).repeat(cur.size(0), 1)
        nxt = torch.ones_like(cur)
        if i < len(w) - 1:
            sq = w[i + 1] ** 2
            cols = sq.sum(dim=(0, *range(2, sq.dim())))
            if cur.dim() == 4 and sq.dim() == 2:
                cols = cols.view(cur.size(0), -1).sum(dim=1)
            nxt = cols.view(-1, *[1] * (cur.dim() - 1)).repeat(1, *cur.shape[1:])
        score = (cur ** 2) * prev * nxt
        ratio = 1.0 - ((1.0 - rates[i]) ** t)
        cutoff = round((1 - ratio) * cur.numel())
        order = torch.sort(score.view(-1), descending=True, stable=True).indices
        mask = torch.ones(cur.numel(), dtype=torch.bool)
        mask[order[cutoff:]] = False
        masks.append(mask.view_as(cur))
    return masks


def bench(name: str, repeats: int, device: torch.device) -> bool:
    shape, target, t = CASES[name]
    torch.manual_seed(0)
    model = create_model(name).to(device)
    pruner = pk.create("lap", model, rates=name, round=t)
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    x, y = torch.randn(60, *shape, device=device), torch.randint(0, 10, (60,), device=device)

    def adam_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def scoring():
        scorer = build_scorer(pruner, None)
        return [scorer.score(i) for i in range(len(pruner.masks))]

    def prune_select():
        return pruner._select(pruner._keep_counts(pruner.numels), None)

    for fn in (adam_step, scoring, prune_select):  # warm-up
        fn()
    ratios: dict[str, list[float]] = {"scoring": [], "prune": []}
    steps = []
    for r in range(repeats):
        order = [adam_step, scoring, prune_select] if r % 2 == 0 else [scoring, prune_select, adam_step]
        times = {fn.__name__: timed(fn, device) for fn in order}
        steps.append(times["adam_step"])
        ratios["scoring"].append(times["scoring"] / times["adam_step"])
        ratios["prune"].append(times["prune_select"] / times["adam_step"])
    print(f"{name}: {len(pruner.masks)} layers, {pruner.masks.numel():,} weights, round {t}; "
          f"Adam step median {1e3 * statistics.median(steps):.2f} ms")
    for key, vals in ratios.items():
        record("lap", f"{name} {key}", vals, target if key == "scoring" else None, "Adam steps, batch 60")
        print(f"  {key:8s} / Adam step: min {min(vals):.3f}  median {statistics.median(vals):.3f}  "
              f"max {max(vals):.3f}" + (f"   (target <= {target})" if key == "scoring" else ""))
    ours = [m.cpu() for m in pruner._select(pruner._keep_counts(pruner.numels), None).values()]
    ref = reference_like_masks([p.cpu() for p in pruner.masks.params], list(RATE_TABLES[name]), t)
    same = all(torch.equal(a, b) for a, b in zip(ours, ref))
    print(f"  masks identical to the reference-like computation: {same}")
    ok = same and statistics.median(ratios["scoring"]) <= target
    print(f"  {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    results = [bench(name, args.repeats, device) for name in CASES]
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
