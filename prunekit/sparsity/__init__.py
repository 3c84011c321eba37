"""Pure tensor logic of sparsity: masks, targets, allocation, selection, schedules, units, parameter/FLOP counts."""
from .allocate import ALLOCATORS, achieved_sparsity, allocate, allocation_kind, check_allocation, custom, er, erk, uniform
from .masks import MaskSet
from .measure import count_flops, count_params
from .optim_state import POLICIES as OPTIMIZER_STATE_POLICIES
from .optim_state import mask_optimizer_state_, reset_optimizer_state_
from .schedules import CosineDecay, CubicSchedule, geometric_sparsity, lap_layer_sparsity, lap_remaining
from .select import (
    STRUCTURES,
    FlatSelector,
    check_structure,
    keep_counts,
    nm_mask,
    nm_sparsity,
    num_keep,
    num_zeros,
    select,
    structure_kind,
)
from .topk import keep_largest, topk_mask
from .targets import PRESETS as TARGET_PRESETS
from .targets import Targets, resolve_targets
from .units import (
    check_sparsity,
    compression_from_sparsity,
    density_from_sparsity,
    keep_ratio_from_sparsity,
    sparsity_from_compression,
    sparsity_from_density,
    sparsity_from_keep_ratio,
)

__all__ = [name for name in dir() if not name.startswith("_")]
