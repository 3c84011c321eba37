"""What ``prunekit.cli`` and every command print through: the terminal console and a run's method label."""
from __future__ import annotations

import json

from rich.console import Console


def make_console(quiet: bool = False) -> Console:
    """A console at least 120 columns wide (tables keep their numbers on one line), without highlighting."""
    return Console(quiet=quiet, highlight=False, width=max(120, Console().width))


def method_label(row: dict) -> str:
    """``magnitude (when=after, allocation=uniform)`` from a result row's stored method settings."""
    cfg = row.get("config")
    if isinstance(cfg, str):
        cfg = json.loads(cfg)
    settings = (cfg or {}).get("method", {})
    extra = [f"{k}={v}" for k, v in settings.items() if k not in ("name", "sparsity")]
    return f"{row['method']} ({', '.join(extra)})" if extra else str(row["method"])
