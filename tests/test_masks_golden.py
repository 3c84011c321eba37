"""Every registered method gives the same masks on the contract models as when the golden was recorded."""
import json

import pytest

from tests.masks_golden import GOLDEN, compute


def test_masks_match_golden():
    golden = json.loads(GOLDEN.read_text())
    now = compute()
    changed = sorted(k for k in golden if k in now and now[k] != golden[k])
    assert not changed, f"masks changed for {changed}"
    missing = sorted(set(golden) - set(now))
    assert not missing, f"methods no longer registered: {missing}"
    new = sorted(set(now) - set(golden))
    if new:
        pytest.fail(f"new methods without a recorded golden (python -m tests.masks_golden --write): {new}")
