"""Fuzzing the readers of untrusted files: random and mutated bytes only ever raise DataError."""
from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from prunekit.data import safe_loads
from prunekit.data import testing as fx
from prunekit.data.cifar import read_cifar
from prunekit.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_idx
from prunekit.errors import DataError
from tests.reliability import EDITS, Outcomes, cuts, fuzz_mutations, fuzz_settings, mutate, record

_rng = np.random.default_rng(0)
VALID_IDX = fx.idx_bytes(_rng.integers(0, 256, (3, 5, 4), dtype=np.uint8))
VALID_IDX_GZ = gzip.compress(VALID_IDX, mtime=0)
VALID_BATCH = fx.cifar_batch_bytes(_rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), [3, 7])


def test_idx_random_bytes():
    seen = Outcomes((DataError,))

    @fuzz_settings(150)
    @given(data=st.binary(max_size=300), magic=st.sampled_from([None, IMAGES_MAGIC, LABELS_MAGIC]))
    def check(data, magic):
        out = seen(parse_idx, data, expected_magic=magic)
        assert out is None or isinstance(out, np.ndarray)

    check()
    record("fuzz", "MNIST IDX parser: random byte strings (0-300 bytes), with and without an expected magic",
           seen.summary())


def test_idx_mutated_files(tmp_path):
    seen = Outcomes((DataError,))

    @fuzz_settings(150)
    @given(edits=EDITS, cut=cuts(VALID_IDX_GZ), gz=st.booleans())
    def check(edits, cut, gz):
        path = tmp_path / ("f.gz" if gz else "f")
        path.write_bytes(mutate(VALID_IDX_GZ if gz else VALID_IDX, edits, cut))
        out = seen(read_idx, path, expected_magic=IMAGES_MAGIC)
        if out is not None:  # a mutation that kept the file valid
            assert out.ndim == 3 and out.dtype == np.uint8

    check()
    record("fuzz", "MNIST IDX files, raw and gzip: up to 6 bytes overwritten and/or cut short", seen.summary())


def test_pickle_random_bytes():
    seen = Outcomes((DataError,))

    @fuzz_settings(150)
    @given(data=st.binary(max_size=400))
    def check(data):
        seen(safe_loads, data)
        seen(safe_loads, b"\x80\x02" + data)

    check()
    record("fuzz", "restricted unpickler (CIFAR batches): random bytes, bare and after a protocol-2 header",
           seen.summary())


def test_cifar_mutated_batches(tmp_path):
    seen = Outcomes((DataError,))
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    folder10 = tmp_path / "cifar-10-batches-py"
    folder10.mkdir()

    def use(mutated):
        # a CIFAR-10-style batch under CIFAR-100 names: valid ones fail on the label key, others on parsing
        (folder / "train").write_bytes(mutated)
        (folder / "test").write_bytes(mutated)
        seen(read_cifar, tmp_path, "cifar100", check_counts=False)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            (folder10 / name).write_bytes(mutated)
        out = seen(read_cifar, tmp_path, "cifar10", check_counts=False)
        if out is not None:
            assert out["train"].images.shape[1:] == (3, 32, 32)

    fuzz_mutations(VALID_BATCH, 150, use)
    record("fuzz", "CIFAR-10/100 batch files: up to 6 bytes overwritten and/or cut short", seen.summary())


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(VALID_BATCH)
            tar.addfile(info, io.BytesIO(VALID_BATCH))
    return buf.getvalue()


VALID_ARCHIVE = _archive()


def test_cifar_mutated_archive(tmp_path):
    seen = Outcomes((DataError,))

    def use(mutated):
        (tmp_path / "cifar-10-python.tar.gz").write_bytes(mutated)
        seen(read_cifar, tmp_path, "cifar10", check_counts=False)

    fuzz_mutations(VALID_ARCHIVE, 60, use)
    record("fuzz", "CIFAR-10 .tar.gz archive: up to 6 bytes overwritten and/or cut short", seen.summary())
