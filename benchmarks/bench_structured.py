"""Structured pruning that really shrinks the model: FLOPs reduction vs measured CPU latency speedup.

For ResNet-20 (option-B ``cifar_resnet20`` and option-A ``resnet20s``) and VGG-16-BN (``vgg16_bn``) with
50% of the channels of every dependency group removed (``structured``, L1 filter magnitude, widths
rounded to multiples of 8), the compact model (``prunekit.export.compact_model``) is checked against
the channel-masked model (max |diff|) and timed against it in this process: the protocol of
``prunekit.report.latency`` (warm-up, rounds in rotating order, median). Printed per model: FLOPs
reduction ``dense / compact`` (``torch.utils.flop_counter``), the speedup per batch size and
``speedup / FLOPs reduction`` at batch 64 (target >= 0.7). Both sides are timed in inference form, with
each Conv→BatchNorm pair folded (``prunekit.export.fold_batchnorm``, what ONNX Runtime and
``torch.jit.freeze`` do); the eager form's ratio is printed too. A second part times CSR sparse matmul
against the masked dense LeNet-300-100 at 90% and 98% unstructured sparsity.
Run: ``python -m benchmarks.bench_structured [--repeats 15 --threads 1]``.
"""
from __future__ import annotations

import argparse
import copy

import torch

import prunekit as pk
from prunekit.export import compact_model, fold_batchnorm, zero_masked_channels_
from prunekit.export.csr import to_csr
from prunekit.models import create as create_model
from prunekit.sparsity.measure import count_flops
from prunekit.report.latency import measure_latency

from .timing import record

MODELS = ("cifar_resnet20", "resnet20s", "vgg16_bn")
TARGET = 0.7


def bench_compact(name: str, repeats: int, batches: tuple[int, ...]) -> bool:
    torch.manual_seed(0)
    model = create_model(name).eval()
    shape = (3, 32, 32)
    pruner = pk.create("structured", model, sparsity=0.5, round_to=8, input_shape=shape)
    pruner.prune()
    x = torch.randn(8, *shape)
    result = compact_model(model, pruner.masks, x)
    masked = zero_masked_channels_(copy.deepcopy(model), pruner.masks, x)
    with torch.inference_mode():
        diff = float((result.model(x) - masked(x)).abs().max())
    dense_flops = count_flops(model, shape)["flops"]
    reduction = dense_flops / count_flops(result.model, shape)["flops"]
    # inference form on both sides (BatchNorm folded, as any runtime does); the eager form as information
    deployed = {"masked": fold_batchnorm(masked), "compact": fold_batchnorm(result.model)}
    with torch.inference_mode():
        fold_diff = float((deployed["compact"](x) - result.model(x)).abs().max())
    table = measure_latency(deployed, shape, batches, repeats=repeats)
    eager = measure_latency({"masked": masked, "compact": result.model}, shape, (64,), repeats=repeats)
    speedup = table.speedup(64, "compact") if 64 in table.seconds else float("nan")
    ratio = speedup / reduction
    print(f"{name}: params {result.params_before:,} -> {result.params_after:,}, weight sparsity "
          f"{pruner.masks.sparsity():.3f}, max |compact - masked| {diff:.2g} (BatchNorm folded: {fold_diff:.2g})")
    print(f"  FLOPs {dense_flops / 1e6:.1f} M -> {dense_flops / reduction / 1e6:.1f} M: reduction {reduction:.2f}x")
    print("  inference form (Conv+BatchNorm folded on both sides):")
    print("  " + table.format().replace("\n", "\n  "))
    print(f"  eager form (BatchNorm separate), batch 64: speedup {eager.speedup(64, 'compact'):.2f}x "
          f"= {eager.speedup(64, 'compact') / reduction:.2f} of the FLOPs reduction")
    ok = diff <= 1e-5 and ratio >= TARGET
    print(f"  speedup / FLOPs reduction at batch 64: {ratio:.2f} (target >= {TARGET})  {'PASS' if ok else 'FAIL'}")
    record("structured", f"{name} FLOPs reduction", [reduction], None, "dense FLOPs / compact FLOPs")
    record("structured", f"{name} compact speedup at batch 64", [speedup], None,
           "masked latency / compact latency (BatchNorm folded)")
    record("structured", f"{name} speedup / FLOPs reduction (b64)", [ratio], TARGET, "ratio of the two above",
           at_least=True)
    record("structured", f"{name} eager speedup / FLOPs reduction (b64)", [eager.speedup(64, "compact") / reduction],
           None, "the same, BatchNorm not folded")
    return ok


def bench_csr(repeats: int) -> None:
    for sparsity in (0.9, 0.98):
        torch.manual_seed(0)
        model = create_model("lenet300_100").eval()
        pruner = pk.create("magnitude", model, sparsity=sparsity, allocation="uniform")
        pruner.prune()
        table = measure_latency({"masked": model, "csr": to_csr(model, pruner.masks, max_density=0.5)}, (784,),
                                (1, 64, 256), repeats=repeats)
        print(f"lenet300_100 at {sparsity:.0%} unstructured sparsity, CSR linear layers vs masked dense:")
        print("  " + table.format().replace("\n", "\n  "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads")
    results = [bench_compact(name, args.repeats, (1, 16, 64)) for name in args.models]
    bench_csr(args.repeats)
    raise SystemExit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
