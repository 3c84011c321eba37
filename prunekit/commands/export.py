"""``prunekit export``: a pruned model as safetensors (weights + masks + report), its compact model,
ONNX (with an onnxruntime parity check) and ``torch.nn.utils.prune`` state."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..experiments.paths import check_output_dir
from ..export import compact_model, save_pruned, state_to_torch_prune
from ..export.onnx import export_onnx, onnx_parity
from ..utils.io import atomic_path
from ._pruned import add_model_args, example_batch, load_model


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a pruned model: safetensors, compact, ONNX, torch prune state")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--compact", action="store_true", help="remove masked channels (needs channel-aligned masks)")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (of the compact model with --compact)")
    p.add_argument("--torch-prune", action="store_true", help="also write torch_prune.pt (weight_orig + weight_mask)")
    p.add_argument("--rtol", type=float, default=1e-5,
                   help="compact parity: max |compact - masked| <= atol + rtol * max |output| (default 1e-5)")
    p.add_argument("--atol", type=float, default=0.0, help="compact parity: absolute part of the bound (default 0)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:

    check_output_dir(args.out, "--out")
    loaded = load_model(args, need_weights=True)
    if args.compact and loaded.masks is None:
        raise ConfigError("--compact needs --masks")
    if args.torch_prune and loaded.masks is None:
        raise ConfigError("--torch-prune needs --masks")
    out = Path(args.out)
    x = example_batch(loaded)
    if not (args.rtol >= 0 and args.atol >= 0):  # (NaN too)
        raise ConfigError(f"--rtol {args.rtol:g} / --atol {args.atol:g} is not allowed; allowed: numbers >= 0")
    result = compact_model(loaded.model, loaded.masks, x, rtol=args.rtol, atol=args.atol) if args.compact else None
    # (the compact check fails before any write)
    written = [save_pruned(out / "pruned.safetensors", loaded.model, loaded.masks, metadata={"model": loaded.name})]
    final = loaded.model
    if result is not None:
        final = result.model
        written.append(save_pruned(out / "compact.safetensors", final, metadata={
            "model": loaded.name, "num_classes": str(args.num_classes), "compact_history": result.history}))
        print(result.summary())
    if args.onnx:
        path = export_onnx(final, out / "model.onnx", x)
        print(f"onnxruntime parity: max |diff| {onnx_parity(final, path, x):.2g}")
        written.append(path)
    if args.torch_prune:
        state = state_to_torch_prune(loaded.model.state_dict(), dict(loaded.masks.items()))
        with atomic_path(out / "torch_prune.pt") as tmp:
            torch.save(state, tmp)
        written.append(out / "torch_prune.pt")
    for path in written:
        print(f"wrote {path}")
    return 0
