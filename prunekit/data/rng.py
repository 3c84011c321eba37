"""Seed derivation for reproducible data streams.

Loaders draw their randomness from a fresh CPU ``torch.Generator`` per (seed, stream, epoch) rather
than from one long-running generator, so that a run resumed at an epoch boundary sees exactly the
batches an uninterrupted run would, and so that two streams with the same seed (BiP's train and
"validation" loaders) are independent.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that depends on ``seed`` and every key (strings, ints), via BLAKE2b."""
    text = ":".join([str(int(seed))] + [str(k) for k in keys]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed`. CPU on purpose: the same numbers on any device."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, *keys))
    return g
