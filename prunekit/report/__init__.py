"""Reporting: parameter/FLOP counts, tables."""
from .measure import count_params, count_flops

__all__ = ["count_flops", "count_params"]
