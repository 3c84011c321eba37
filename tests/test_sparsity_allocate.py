"""ERK/ER/uniform/custom allocation goldens and invariants."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.errors import ConfigError
from prunekit.sparsity import allocate, erk, uniform
from prunekit.sparsity.allocate import custom


def open_lth_resnet20_shapes():
    """Prunable weight shapes of the open_lth CIFAR ResNet-20 (1x1-conv shortcuts), module order."""
    shapes = {"conv": (16, 3, 3, 3)}
    for stage, (cin, cout) in enumerate([(16, 16), (16, 32), (32, 64)], start=1):
        for b in range(3):
            i = cin if b == 0 else cout
            shapes[f"s{stage}.{b}.conv1"] = (cout, i, 3, 3)
            shapes[f"s{stage}.{b}.conv2"] = (cout, cout, 3, 3)
            if b == 0 and cin != cout:
                shapes[f"s{stage}.{b}.shortcut"] = (cout, cin, 1, 1)
    shapes["fc"] = (10, 64)
    return shapes


def test_resnet20_shapes_match_reference_count():
    shapes = open_lth_resnet20_shapes()
    assert len(shapes) == 22
    assert sum(math.prod(s) for s in shapes.values()) == 270_896


def test_erk_resnet20_90_matches_methods_md_goldens():
    # methods.md §1b: conv1 0.983, stage-1 convs 0.280, stage-2 convs 0.129 (first 0.199),
    # stage-2 shortcut 1.0, stage-3 convs 0.062 (first 0.094), stage-3 shortcut 0.813, fc 1.0
    dens = {n: 1 - s for n, s in erk(open_lth_resnet20_shapes(), 0.9).items()}
    assert round(dens["conv"], 3) == 0.983
    for b in range(3):
        assert round(dens[f"s1.{b}.conv1"], 3) == 0.280
        assert round(dens[f"s1.{b}.conv2"], 3) == 0.280
    assert round(dens["s2.0.conv1"], 3) == 0.199
    assert round(dens["s2.0.conv2"], 3) == 0.129
    assert round(dens["s2.1.conv1"], 3) == 0.129
    assert dens["s2.0.shortcut"] == 1.0
    assert round(dens["s3.0.conv1"], 3) == 0.094
    assert round(dens["s3.2.conv2"], 3) == 0.062
    assert round(dens["s3.0.shortcut"], 3) == 0.813
    assert dens["fc"] == 1.0


def test_erk_total_budget_is_exact():
    shapes = open_lth_resnet20_shapes()
    for s in (0.5, 0.9, 0.99, 0.9968):
        alloc = erk(shapes, s)
        kept = sum((1 - alloc[n]) * math.prod(sh) for n, sh in shapes.items())
        total = sum(math.prod(sh) for sh in shapes.values())
        assert kept == pytest.approx((1 - s) * total, rel=1e-9)
        assert all(0.0 <= v < 1.0 for v in alloc.values())


def test_er_uses_only_fan_dims():
    # 2 conv layers with same fans but different kernels: ER gives equal density, ERK favours the small kernel
    shapes = {"a": (8, 8, 1, 1), "b": (8, 8, 5, 5)}
    e = allocate("er", shapes, 0.5)
    assert e["a"] == pytest.approx(e["b"])
    k = erk(shapes, 0.5)
    assert k["a"] < k["b"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64), st.sampled_from([1, 3])), min_size=1, max_size=6),
    st.floats(0.0, 0.995),
)
def test_erk_property_budget_and_bounds(layers, sparsity):
    shapes = {f"l{i}": (o, c, k, k) for i, (o, c, k) in enumerate(layers)}
    alloc = erk(shapes, sparsity)
    total = sum(math.prod(s) for s in shapes.values())
    kept = sum((1 - alloc[n]) * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx((1 - sparsity) * total, rel=1e-6, abs=1e-6)
    assert all(-1e-12 <= v <= 1.0 for v in alloc.values())


def test_uniform_and_custom_and_errors():
    shapes = {"a.weight": (4, 4), "b.weight": (2, 8)}
    assert uniform(shapes, 0.3) == {"a.weight": 0.3, "b.weight": 0.3}
    assert custom(shapes, {"a.*": 0.5}, default=0.1) == {"a.weight": 0.5, "b.weight": 0.1}
    with pytest.raises(ConfigError, match="b.weight"):
        custom(shapes, {"a.*": 0.5})
    with pytest.raises(ConfigError, match="zzz"):
        custom(shapes, {"zzz": 0.5}, default=0.0)
    with pytest.raises(ConfigError, match="did you mean .*'erk'"):
        allocate("ekr", shapes, 0.5)
    with pytest.raises(ConfigError, match="sparsity"):
        uniform(shapes, 1.5)
