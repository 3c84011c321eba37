"""``prunekit measure``: parameters, FLOPs (dense and sparsity-aware) and CPU latency of a pruned model,
optionally of its compact export, as ratios."""
from __future__ import annotations

import copy

import torch

from ..export import compact_model, fold_batchnorm
from ..report.latency import measure_latency
from ..sparsity.measure import count_flops, count_params
from ._args import COUNT, THREADS
from ._pruned import add_model_args, example_batch, load_model


def register(subparsers) -> None:
    p = subparsers.add_parser("measure", help="parameters, FLOPs and latency: dense vs masked vs compact")
    add_model_args(p)
    p.add_argument("--compact", action="store_true", help="also measure the compact export (channel masks)")
    p.add_argument("--latency", action="store_true", help="time the models (median of repeated runs)")
    p.add_argument("--batch-sizes", type=COUNT, nargs="+", default=[1, 16, 64])
    p.add_argument("--repeats", type=COUNT, default=15)
    p.add_argument("--threads", type=THREADS, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--eager", action="store_true",
                   help="time the models as they are (default: BatchNorm folded into convolutions, the inference form)")
    p.set_defaults(func=cmd_measure)


def cmd_measure(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args)
    masks = loaded.masks
    params = count_params(loaded.model, masks)
    flops = count_flops(loaded.model, loaded.input_shape, masks)
    print(f"{loaded.name}: input {loaded.input_shape}")
    print(f"  params {params['params']:,}  nonzero {params['nonzero']:,}  "
          f"({params['params'] / max(params['nonzero'], 1):.2f}x fewer)")
    print(f"  FLOPs  {flops['flops'] / 1e6:,.2f} M  sparse {flops['sparse_flops'] / 1e6:,.2f} M  "
          f"({flops['flops'] / max(flops['sparse_flops'], 1):.2f}x fewer)")
    candidates = {"masked" if masks is not None else "dense": loaded.model}
    if args.compact and masks is not None:
        result = compact_model(loaded.model, masks, example_batch(loaded))
        c_flops = count_flops(result.model, loaded.input_shape)["flops"]
        print(f"  compact: params {result.params_after:,}  FLOPs {c_flops / 1e6:,.2f} M  "
              f"({flops['flops'] / max(c_flops, 1):.2f}x fewer)  max |compact - masked| {result.max_abs_diff:.2g}")
        candidates["compact"] = result.model
    if args.latency:
        form = (lambda m: copy.deepcopy(m)) if args.eager else fold_batchnorm
        table = measure_latency({k: form(v) for k, v in candidates.items()}, loaded.input_shape,
                                args.batch_sizes, repeats=args.repeats)
        print(f"  latency ({torch.get_num_threads()} threads, median of {args.repeats}, "
              f"{'eager' if args.eager else 'BatchNorm folded'}):")
        print("  " + table.format().replace("\n", "\n  "))
    return 0
