"""Schedules and unit conversions against hand-computed values."""
import math

import pytest

from prunekit.errors import ConfigError
from prunekit.sparsity import (
    CosineDecay,
    CubicSchedule,
    compression_from_sparsity,
    geometric_sparsity,
    lap_layer_sparsity,
    lap_remaining,
    sparsity_from_compression,
    sparsity_from_density,
    sparsity_from_keep_ratio,
)


def test_cubic_matches_granet_formula_by_hand():
    # GraNet scripts: 160 epochs; say 391 iters/epoch (CIFAR-10 50k / 128), dT = 1000,
    # init_prune_epoch 0, final_prune_epoch 80, init density 1.0 (s_i=0), final density 0.05 (s_f=0.95).
    end = 80 * 391  # 31280 -> k_end = 31
    sch = CubicSchedule(0.0, 0.95, 0, end, 1000)
    assert (sch.k0, sch.k_end) == (0, 31)
    assert sch.sparsity_at(0) is None  # no update before the first step
    assert sch.sparsity_at(999) is None  # not a multiple of dT
    # k = 1: 0.95 * (1 - (1 - 1/31)^3) = 0.95 * 0.0936860 = 0.0890017
    assert sch.sparsity_at(1000) == pytest.approx(0.95 * (1 - (30 / 31) ** 3), abs=1e-12)
    assert sch.sparsity_at(1000) == pytest.approx(0.0890017, abs=1e-6)
    # k = 15: 0.95 * (1 - (16/31)^3) = 0.95 * 0.8625088 = 0.8193834
    assert sch.sparsity_at(15000) == pytest.approx(0.8193834, abs=1e-6)
    # last pruning step k = k_end - 1 = 30: 0.95 * (1 - (1/31)^3) -- never quite 0.95 (reference quirk)
    assert sch.sparsity_at(30000) == pytest.approx(0.95 * (1 - 1 / 31**3), abs=1e-12)
    assert sch.sparsity_at(31000) is None
    assert CubicSchedule(0.0, 0.95, 0, end, 1000, reach_final=True).sparsity_at(31000) == pytest.approx(0.95)


def test_cubic_sparse_to_sparse_starts_at_initial():
    # s_i = 0.5 (density 0.5), s_f = 0.9, t0 = 2000, t_end = 12000, dT = 1000 -> k0 = 2, k_end = 12
    sch = CubicSchedule(0.5, 0.9, 2000, 12000, 1000)
    assert sch.sparsity_at(1000) is None
    assert sch.sparsity_at(2000) == pytest.approx(0.5)
    assert sch.sparsity_at(7000) == pytest.approx(0.5 + 0.4 * (1 - 0.5**3))  # 0.85
    assert sch.sparsity_at(11000) == pytest.approx(0.5 + 0.4 * (1 - 0.1**3))  # 0.8996


def test_cubic_rejects_bad_config():
    with pytest.raises(ConfigError, match="update_frequency"):
        CubicSchedule(0.0, 0.9, 0, 10, 0)
    with pytest.raises(ConfigError, match="final_sparsity"):
        CubicSchedule(0.0, 1.2, 0, 10, 1)


def test_cosine_decay_values():
    d = CosineDecay(0.5, total_steps=1000, eta_min=0.005)
    assert d.value(0) == pytest.approx(0.5)
    assert d.value(500) == pytest.approx(0.005 + 0.495 * 0.5)  # 0.2525
    assert d.value(250) == pytest.approx(0.005 + 0.495 * (1 + math.cos(math.pi / 4)) / 2)  # 0.42750...
    assert d.value(250) == pytest.approx(0.4275, abs=1e-4)
    assert d.value(1000) == pytest.approx(0.005)
    assert d.value(5000) == pytest.approx(0.005)


def test_lap_round_grid_for_fcn():
    # FCN 784-500-500-500-500-10, rates [.5,.5,.5,.5,.25]: rounds 4..10 -> methods.md §4a
    numels = [784 * 500, 500 * 500, 500 * 500, 500 * 500, 500 * 10]
    rates = [0.5, 0.5, 0.5, 0.5, 0.25]
    got = [round(100 * lap_remaining(numels, rates, t), 2) for t in range(4, 11)]
    assert got == [6.36, 3.21, 1.63, 0.84, 0.43, 0.23, 0.12]


def test_lap_round_grid_for_conv6():
    # Conv-6: rates [.15]*6 + [.2, .2, .1]; rounds 12..18 -> 10.62 ... 3.62 % (methods.md §4a)
    numels = [3 * 64 * 9, 64 * 64 * 9, 64 * 128 * 9, 128 * 128 * 9, 128 * 256 * 9, 256 * 256 * 9, 4096 * 256, 256 * 256, 2560]
    rates = [0.15] * 6 + [0.2, 0.2, 0.1]
    got = [round(100 * lap_remaining(numels, rates, t), 2) for t in range(12, 19)]
    assert got == [10.62, 8.86, 7.39, 6.18, 5.17, 4.32, 3.62]


def test_lap_layer_sparsity():
    assert lap_layer_sparsity(0.5, 3) == pytest.approx(0.875)


def test_geometric_levels():
    assert geometric_sparsity(0) == 0.0
    assert geometric_sparsity(1) == pytest.approx(0.2)
    assert geometric_sparsity(10) == pytest.approx(1 - 0.8**10)  # 0.892626...


def test_unit_conversions():
    # DPaI compression c: density 10^-c
    expected = {0.5: 68.38, 1.0: 90.00, 1.5: 96.84, 2.0: 99.00, 2.5: 99.68}
    for c, pct in expected.items():
        assert round(100 * sparsity_from_compression(c), 2) == pct
    assert compression_from_sparsity(0.99) == pytest.approx(2.0)
    assert sparsity_from_density(0.05) == pytest.approx(0.95)
    assert sparsity_from_keep_ratio(0.1) == pytest.approx(0.9)
    with pytest.raises(ConfigError, match="k="):
        sparsity_from_keep_ratio(0.0)
    with pytest.raises(ConfigError, match="compression"):
        sparsity_from_compression(-1)
