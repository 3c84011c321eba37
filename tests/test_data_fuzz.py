"""Fuzzing the readers of untrusted files: random and mutated bytes only ever raise DataError."""
from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunekit.data import safe_loads
from prunekit.data import testing as fx
from prunekit.data.cifar import read_cifar
from prunekit.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_idx
from prunekit.errors import DataError

_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_rng = np.random.default_rng(0)
VALID_IDX = fx.idx_bytes(_rng.integers(0, 256, (3, 5, 4), dtype=np.uint8))
VALID_IDX_GZ = gzip.compress(VALID_IDX, mtime=0)
VALID_BATCH = fx.cifar_batch_bytes(_rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), [3, 7])


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


_edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)


def _only_data_error(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DataError:
        return None


@_FUZZ
@given(data=st.binary(max_size=300), magic=st.sampled_from([None, IMAGES_MAGIC, LABELS_MAGIC]))
def test_idx_random_bytes(data, magic):
    out = _only_data_error(parse_idx, data, expected_magic=magic)
    assert out is None or isinstance(out, np.ndarray)


@_FUZZ
@given(edits=_edits, cut=st.one_of(st.none(), st.integers(0, len(VALID_IDX_GZ))), gz=st.booleans())
def test_idx_mutated_files(tmp_path, edits, cut, gz):
    path = tmp_path / ("f.gz" if gz else "f")
    path.write_bytes(_mutate(VALID_IDX_GZ if gz else VALID_IDX, edits, cut))
    out = _only_data_error(read_idx, path, expected_magic=IMAGES_MAGIC)
    if out is not None:  # a mutation that kept the file valid
        assert out.ndim == 3 and out.dtype == np.uint8


@_FUZZ
@given(data=st.binary(max_size=400))
def test_pickle_random_bytes(data):
    _only_data_error(safe_loads, data)
    _only_data_error(safe_loads, b"\x80\x02" + data)


@_FUZZ
@given(edits=_edits, cut=st.one_of(st.none(), st.integers(0, len(VALID_BATCH))))
def test_cifar_mutated_batches(tmp_path, edits, cut):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir(exist_ok=True)
    mutated = _mutate(VALID_BATCH, edits, cut)
    # a CIFAR-10-style batch under CIFAR-100 names: valid ones fail on the label key, others on parsing
    (folder / "train").write_bytes(mutated)
    (folder / "test").write_bytes(mutated)
    _only_data_error(read_cifar, tmp_path, "cifar100", check_counts=False)
    folder10 = tmp_path / "cifar-10-batches-py"
    folder10.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder10 / name).write_bytes(mutated)
    out = _only_data_error(read_cifar, tmp_path, "cifar10", check_counts=False)
    if out is not None:
        assert out["train"].images.shape[1:] == (3, 32, 32)


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(VALID_BATCH)
            tar.addfile(info, io.BytesIO(VALID_BATCH))
    return buf.getvalue()


VALID_ARCHIVE = _archive()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=_edits, cut=st.one_of(st.none(), st.integers(0, len(VALID_ARCHIVE))))
def test_cifar_mutated_archive(tmp_path, edits, cut):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(_mutate(VALID_ARCHIVE, edits, cut))
    _only_data_error(read_cifar, tmp_path, "cifar10", check_counts=False)
