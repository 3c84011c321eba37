"""The README's own-loop example runs and does what it says."""
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_training_loop.py"


def test_own_training_loop_example():
    out = subprocess.run([sys.executable, str(EXAMPLE)], check=True, capture_output=True, text=True, timeout=300).stdout
    dense = float(re.search(r"dense accuracy ([\d.]+)%", out).group(1))
    sparse = float(re.search(r"90% sparse accuracy ([\d.]+)%", out).group(1))
    assert re.search(r"total\s+\S*\s*1895\s+0\.9000", out)  # 18,944 weights, int(0.9 * 18944) = 17,049 pruned
    assert dense > 95.0 and sparse > 95.0
