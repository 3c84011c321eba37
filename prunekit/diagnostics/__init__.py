"""Diagnostics for sparse networks: connectivity (effective sparsity, paths, nodes, kernels, layer
collapse) and the sanity-check controls of pruning at initialization (shuffle, reinitialize, invert)."""
from .connectivity import (
    Connectivity,
    check_layer_collapse,
    connectivity,
    effective_masks,
    log_paths,
    summary,
)
from .controls import invert_scores, reinitialize_weights, shuffle_within_layers

__all__ = ["Connectivity", "check_layer_collapse", "connectivity", "effective_masks", "invert_scores", "log_paths",
           "reinitialize_weights", "shuffle_within_layers", "summary"]
