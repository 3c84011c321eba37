"""Model structure that structured pruning and the compact export share: the channel groups of a model
(Torch-Pruning's dependency graph) and its attention heads.

A model's own module is recognised by a declared class attribute ``structure_kind`` rather than by its
type, so this floor imports no model code: ``"pad_shortcut"`` (an option-A shortcut with ``pad``/``extra``
zero channels) and ``"qkv_attention"`` (``heads`` and q/k/v/out linear layers).
"""
from .graph import ChannelGather, ChannelGraph
from .heads import AttentionHeads, find_attention

__all__ = ["AttentionHeads", "ChannelGather", "ChannelGraph", "find_attention"]
