"""Export of pruned models: compact (physically smaller) models, safetensors, ONNX, torch.nn.utils.prune
interop, CSR and semi-structured sparse layers."""
from .compact import CompactResult, check_channel_aligned, compact_model, rebuild_compact, zero_masked_channels_
from .fold import fold_batchnorm
from .torch_prune import from_torch_prune, state_from_torch_prune, state_to_torch_prune, to_torch_prune
from .weights import load_pruned, save_pruned

__all__ = ["CompactResult", "check_channel_aligned", "compact_model", "fold_batchnorm",
           "from_torch_prune", "load_pruned", "rebuild_compact", "save_pruned", "state_from_torch_prune",
           "state_to_torch_prune", "to_torch_prune", "zero_masked_channels_"]
