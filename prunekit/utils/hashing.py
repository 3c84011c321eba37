"""The hashes that name run directories and shared caches, and the checksum of a written config file.

Every one goes through here so that the canonical form (sorted keys, ``str()`` of what JSON cannot hold)
is written once: a change to it would move every run directory (``tests/test_run_hash.py`` pins them).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def text_digest(text: str) -> str:
    """The SHA-256 of ``text`` (UTF-8), as 64 hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()


def settings_hash(settings: Any) -> str:
    """The first 10 hex digits of :func:`text_digest` of ``settings`` as canonical JSON."""
    return text_digest(json.dumps(settings, sort_keys=True, default=str))[:10]
