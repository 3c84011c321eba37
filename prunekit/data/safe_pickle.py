"""A restricted unpickler for the CIFAR python batches.

The official CIFAR "python version" files are Python-2 pickles of dicts holding strings, lists of ints
and one numpy uint8 array (``data``). Unpickling them with :mod:`pickle` would let a crafted file run
arbitrary code, so :func:`safe_loads` resolves *no* global except the three names a numpy array pickle
needs, and maps those to inert stand-ins that rebuild plain numeric arrays with ``np.frombuffer``.
Everything else (``os.system``, ``builtins.eval``, object arrays, persistent ids ...) raises
:class:`DataError`.
"""
from __future__ import annotations

import io
import pickle
import pickletools
from typing import Any

import numpy as np

from ..errors import DataError

# Numeric dtypes a dataset array may have; object/void/string dtypes are refused.
_ALLOWED_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "b1"}
_MAX_DEPTH = 64


class _DType:
    """Stand-in for ``numpy.dtype(name, align, copy)`` as pickled; BUILD sets the byte order."""

    def __init__(self, name: Any = None, align: Any = False, copy: Any = True):
        if isinstance(name, bytes):
            name = name.decode("latin1")
        if not isinstance(name, str) or name not in _ALLOWED_DTYPES:
            raise pickle.UnpicklingError(f"numpy dtype {name!r} is not allowed")
        self.name = name
        self.order = "|"

    def __setstate__(self, state: Any) -> None:
        # numpy pickles dtype state as (version, byteorder, subarray, names, fields, elsize, align, flags)
        if not isinstance(state, tuple) or len(state) < 2:
            raise pickle.UnpicklingError("malformed numpy dtype state")
        order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"malformed numpy dtype byte order {order!r}")
        if any(s is not None for s in state[2:5]):
            raise pickle.UnpicklingError("structured numpy dtypes are not allowed")
        self.order = "<" if order == "=" else order

    def to_numpy(self) -> np.dtype:
        return np.dtype(("" if self.order == "|" else self.order) + self.name)


class _Array:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)`` + BUILD(state)."""

    def __init__(self, *args: Any):
        self.value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, rawdata); version may be absent
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran, raw = state
        self.value = _make_array(raw, dtype, shape, "F" if fortran else "C")


def _make_array(raw: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, _DType):
        raise pickle.UnpicklingError("numpy array without an allowed dtype")
    if isinstance(raw, str):  # Python-2 str decoded as text
        raw = raw.encode("latin1")
    if isinstance(raw, pickle.PickleBuffer):
        raw = bytes(raw.raw())
    if not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy array data must be bytes")
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise pickle.UnpicklingError(f"malformed numpy array shape {shape!r}")
    if isinstance(order, bytes):
        order = order.decode("latin1")
    dt = dtype.to_numpy()
    n = 1
    for s in shape:
        n *= s
    if n * dt.itemsize != len(raw):
        raise pickle.UnpicklingError(f"numpy array of shape {shape} needs {n * dt.itemsize} bytes, "
                                     f"has {len(raw)}")
    return np.frombuffer(bytes(raw), dtype=dt).reshape(shape, order="F" if order == "F" else "C")


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """Stand-in for ``numpy.core.numeric._frombuffer`` (protocol-5 array pickles)."""
    return _make_array(buf, dtype, shape, order)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Stand-in for ``_codecs.encode``: how protocol <= 2 pickles written by Python 3 store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode("latin1")


class _Marker:
    """Placeholder for ``numpy.ndarray`` (only ever passed to ``_reconstruct``)."""


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _codecs_encode,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_mod, "_reconstruct")] = _Array
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED_GLOBALS[(_mod, "_frombuffer")] = _frombuffer
_ALLOWED_GLOBALS[("numpy", "ndarray")] = _Marker
_ALLOWED_GLOBALS[("numpy", "dtype")] = _DType


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


# Opcodes plain data never needs: out-of-band buffers, persistent ids, the extension registry and
# the old instance-creation opcodes.
_FORBIDDEN_OPCODES = {"NEXT_BUFFER", "READONLY_BUFFER", "PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "INST", "OBJ"}


def _prescan(data: bytes) -> None:
    """Walk the opcodes before unpickling.

    Why: ``pickletools.genops`` checks every length field against the bytes that remain, whereas the
    C unpickler allocates first (a 30-byte file declaring an 8 GB bytearray would be a memory bomb).
    """
    for opcode, _, _ in pickletools.genops(io.BytesIO(data)):
        if opcode.name in _FORBIDDEN_OPCODES:
            raise pickle.UnpicklingError(f"opcode {opcode.name} is not allowed")


def _finish(obj: Any, depth: int = 0, done: dict[int, Any] | None = None) -> Any:
    """Replace stand-ins by numpy arrays; refuse anything that is not plain data.

    ``done`` memoizes shared sub-objects so that a pickle of nested repeated references (a "billion
    laughs") costs its size, not its expansion.
    """
    if depth > _MAX_DEPTH:
        raise pickle.UnpicklingError("nesting too deep")
    if done is None:
        done = {}
    if isinstance(obj, (np.ndarray, bytes, str, int, float, bool, type(None))):
        return obj
    key = id(obj)
    if key in done:
        return done[key][1]
    if isinstance(obj, _Array):
        if obj.value is None:
            raise pickle.UnpicklingError("numpy array without data")
        out: Any = obj.value
    elif isinstance(obj, dict):
        out = {_finish(k, depth + 1, done): _finish(v, depth + 1, done) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [_finish(v, depth + 1, done) for v in obj]
    elif isinstance(obj, tuple):
        out = tuple(_finish(v, depth + 1, done) for v in obj)
    else:
        raise pickle.UnpicklingError(f"object of type {type(obj).__name__} is not allowed")
    done[key] = (obj, out)  # keep obj alive so its id is not reused
    return out


def safe_loads(data: bytes, *, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` allowing only plain containers, scalars, strings/bytes and numeric arrays.

    Python-2 ``str`` objects come back as ``bytes`` (``encoding="bytes"``, as the CIFAR readers
    expect). Any other content, or a malformed stream, raises :class:`DataError` naming ``source``.
    """
    try:
        _prescan(data)
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
        return _finish(obj)
    except DataError:
        raise
    except RecursionError:
        raise DataError(f"{source}: malformed pickle (nesting too deep)") from None
    except Exception as e:  # any failure of the pickle machine on untrusted bytes is a bad file
        raise DataError(f"{source}: not an allowed pickle of plain data ({type(e).__name__}: {e})") from None
