"""Every benchmark script imports and has a ``main`` (a module moved inside prunekit must not leave
``make bench`` broken until someone runs it)."""
import importlib
import pkgutil

import pytest

import benchmarks
from benchmarks.run_all import SUITE

MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_imports_and_has_main(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.main)


def test_run_all_lists_every_cpu_benchmark():
    listed = {module for module, _, _ in SUITE.values()}
    assert listed == {f"benchmarks.{m}" for m in MODULES if m != "bench_gpu"}  # bench_gpu: make bench-gpu
