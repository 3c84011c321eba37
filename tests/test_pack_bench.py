"""The benchmark plumbing of issue 20: quiet-round medians (hand-computed), paired timing records, and
``benchmarks.bench_pack`` end to end at tiny sizes (its ratios are not asserted: they are measurements)."""
import json
import math

import pytest
import torch

from benchmarks import bench_pack
from benchmarks.timing import quiet_median, quiet_rounds, record_versus


def test_quiet_rounds_keep_rounds_within_1_3x_of_each_sides_fastest():
    a = [1.0, 1.2, 2.0, 1.3, 1.31]
    b = [3.0, 2.0, 2.1, 2.6, 2.0]
    # fastest: a 1.0 (limit 1.3), b 2.0 (limit 2.6); round 0 fails b, round 2 fails a, round 4 fails a
    assert quiet_rounds(a, b) == [1, 3]
    assert quiet_median(a, b, lambda x, y: x / y) == (1.2 / 2.0 + 1.3 / 2.6) / 2
    assert math.isnan(quiet_median([1.0, 2.0], [2.0, 1.0], lambda x, y: x / y))  # no round quiet on both


def test_record_versus_writes_all_round_and_quiet_medians(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    monkeypatch.setenv("PRUNEKIT_BENCH_RESULTS", str(path))
    med, quiet = record_versus("x", "ours / ref", [1.0, 2.0, 1.1], [2.0, 2.0, 2.2], "ref")
    row = json.loads(path.read_text())
    assert med == 0.5 and quiet == 0.5 and row["median"] == 0.5 and row["quiet"] == 0.5 and row["repeats"] == 3


def test_bench_pack_runs_both_kernels_at_tiny_sizes(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.jsonl"
    monkeypatch.setenv("PRUNEKIT_BENCH_RESULTS", str(path))
    assert bench_pack.main(["--repeats", "1", "--steps", "2", "--packs", "1", "4", "--models", "lenet300_100"]) == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["measure"] for r in rows] == [
        "lenet300_100 arithmetic ceiling of any pack",
        "lenet300_100 K=1 loop kernels: runs/hour packed / sequential",
        "lenet300_100 K=4 loop kernels: runs/hour packed / sequential",
        "lenet300_100 K=4 stacked kernels: runs/hour packed / sequential"]
    assert rows[2]["target"] is None and all(r["median"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert out.count("lenet300_100") == 4 and "a pack can gain at most" in out and "stacked   4" in out and "loop      4" in out


def test_arithmetic_ceiling_counts_the_steps_multiply_adds():
    """LeNet-300-100 at batch 128: forward and weight gradient of every layer, input gradient of all but
    the first (the images need none): 2 flops per multiply-add."""
    c = bench_pack.ceiling("lenet300_100", torch.device("cpu"), rate=1e9, steps=1)
    layers = [(784, 300), (300, 100), (100, 10)]
    assert c["flops"] == 2 * 128 * (3 * sum(i * o for i, o in layers) - 784 * 300)
    assert c["floor_s"] == pytest.approx(c["flops"] / 1e9) and c["ceiling"] == pytest.approx(c["step_s"] / c["floor_s"])
