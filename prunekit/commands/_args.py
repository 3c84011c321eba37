"""Bounded argparse types: a flag's value out of range is one line naming the flag and what is allowed."""
from __future__ import annotations

import argparse
from typing import Callable


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]`` (argparse names the flag in its message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: an integer in [{low}, {high}]") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: an integer in [{low}, {high}]")
        return value

    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


COUNT = int_in(1, 1_000_000)  # a number of classes, repeats, batch size ...
THREADS = int_in(1, 4096)
