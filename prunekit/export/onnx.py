"""ONNX export with an onnxruntime parity check.

Uses PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which needs only
the ``onnx`` package; the batch dimension is dynamic. :func:`onnx_parity` runs the file in onnxruntime
(CPU) and returns the largest absolute difference to the PyTorch model on the same inputs.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..utils.io import atomic_path


def _require(module: str, extra: str = "onnx"):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"ONNX export needs {module}; install it with pip install 'prunekit[{extra}]'") from None


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | os.PathLike, example_inputs: Tensor, opset: int = 17) -> Path:
    """Write ``model`` (eval mode) as ONNX to ``path`` atomically; input ``input``, output ``output``."""
    _require("onnx")
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
            warnings.filterwarnings("ignore", message="Constant folding")  # strided slices stay as ops
            torch.onnx.export(model, (example_inputs,), str(tmp), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=opset,
                              dynamo=False)
    finally:
        model.train(was_training)
    return path


@torch.no_grad()
def onnx_parity(model: nn.Module, path: str | os.PathLike, inputs: Tensor) -> float:
    """Max |onnxruntime(path)(inputs) - model(inputs)| (model in eval mode, CPU float32)."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": inputs.detach().cpu().numpy()})[0]
    was_training = model.training
    model.eval()
    try:
        expected = model(inputs).detach().cpu()
    finally:
        model.train(was_training)
    return float((torch.from_numpy(got) - expected).abs().max())
