"""CIFAR-10 reader for the official ``cifar-10-batches-py`` pickles, with a safe unpickler.

The official batches are Python pickles. Unpickling an untrusted pickle can run arbitrary code,
so :class:`SafeUnpickler` only accepts the handful of globals a numpy array needs, maps even those
to inert recording stubs (numpy's own ``__setstate__`` is not hardened against crafted states),
and refuses everything else before it is imported. Opcode lengths and memo indices are checked
before unpickling so a few lying bytes cannot request huge allocations.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from rlprune.data.idx import user_cache_dir
from rlprune.errors import DataError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_DIRNAME",
    "CIFAR10_URL",
    "SafeUnpickler",
    "find_cifar10",
    "read_cifar10",
    "to_array",
]

logger = logging.getLogger(__name__)

CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_PIXELS = 3 * 32 * 32
_MAX_BATCH_BYTES = 1 << 30  # an official batch is ~31 MB

_NUMERIC_DTYPES = frozenset({"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"})
_MAX_NDIM = 8
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _text(value: object) -> str:
    """Decode a pickled Python-2 ``str`` (bytes under ``encoding="bytes"``) or pass a str."""
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, str):
        return value
    raise DataError(f"expected a string in a numpy pickle, got {type(value).__name__}")


class _NDArrayMarker:
    """Stands in for ``numpy.ndarray`` (only ever passed to ``_reconstruct``)."""


class _DTypeStub:
    """Records ``numpy.dtype(spec, align, copy)`` and its state; resolves only plain numbers."""

    spec: object = None
    state: object = None

    def __init__(self, spec: object = None, *_args: object) -> None:
        self.spec = spec

    def __setstate__(self, state: object) -> None:
        self.state = state

    def resolve(self) -> np.dtype:
        """Return the real dtype, refusing structured, object or exotic dtypes."""
        spec = _text(self.spec)
        if spec not in _NUMERIC_DTYPES:
            raise DataError(f"unsupported dtype {spec!r} in pickle")
        order = "|"
        if isinstance(self.state, tuple) and len(self.state) >= 5:
            order = _text(self.state[1])
            if any(part is not None for part in self.state[2:5]):
                raise DataError("structured or sub-array dtypes are not allowed in a pickle")
        if order not in ("<", ">", "|", "="):
            raise DataError(f"bad byte order {order!r} in pickled dtype")
        dtype = np.dtype(spec)
        if order in ("|", "="):
            return dtype
        return dtype.newbyteorder("<" if order == "<" else ">")


def _build_array(shape: object, dtype: object, raw: object, fortran: bool) -> np.ndarray:
    """Validate pickled array parts and build an owned, native-endian array from raw bytes."""
    if not isinstance(dtype, _DTypeStub):
        raise DataError("pickled array has no plain dtype")
    dt = dtype.resolve()
    if not isinstance(raw, (bytes, bytearray)):
        raise DataError("pickled array data must be raw bytes (object arrays are not allowed)")
    if (
        not isinstance(shape, tuple)
        or len(shape) > _MAX_NDIM
        or not all(isinstance(d, int) and d >= 0 for d in shape)
    ):
        raise DataError(f"bad array shape {shape!r} in pickle")
    count = 1
    for d in shape:
        count *= d
    if count * dt.itemsize != len(raw):
        raise DataError(f"array shape {shape} does not match its {len(raw)} data bytes")
    arr = np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C")
    return np.array(arr, dtype=dt.newbyteorder("="), order="C")  # owned, writable copy


class _ArrayStub:
    """Records ``_reconstruct(ndarray, ...)`` + ``__setstate__``; built by :meth:`resolve`."""

    state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def resolve(self) -> np.ndarray:
        """Return the validated array described by the recorded state."""
        st = self.state
        if isinstance(st, tuple) and len(st) == 5:
            st = st[1:]  # (version, shape, dtype, is_fortran, rawdata)
        if not isinstance(st, tuple) or len(st) != 4:
            raise DataError("malformed numpy array state in pickle")
        shape, dtype, fortran, raw = st
        return _build_array(shape, dtype, raw, bool(fortran is True))


def _reconstruct(subtype: object, *_args: object) -> _ArrayStub:
    if subtype is not _NDArrayMarker:
        raise DataError("pickle reconstructs something other than numpy.ndarray")
    return _ArrayStub()


def _frombuffer(buf: object, dtype: object, shape: object, order: object = "C") -> np.ndarray:
    return _build_array(shape, dtype, buf, _text(order) == "F")


def _scalar(dtype: object, raw: object = b"") -> int | float | bool:
    value = _build_array((), dtype, raw, False)
    return value.item()


def _latin1_encode(obj: object, encoding: object = "utf-8", *_args: object) -> bytes:
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise DataError("only latin-1 _codecs.encode is allowed in a pickle")
    return obj.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    if args:  # bytes(n) would allocate n zero bytes: only the no-argument form is needed
        raise DataError("only bytes() with no arguments is allowed in a pickle")
    return b""


_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): _NDArrayMarker,
    ("numpy", "dtype"): _DTypeStub,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild plain numeric numpy arrays, never run code.

    Only these globals are accepted: ``numpy.ndarray``, ``numpy.dtype``,
    ``numpy(._)core.multiarray._reconstruct``, ``numpy(._)core.numeric._frombuffer``
    (protocol 5), ``numpy(._)core.multiarray.scalar`` (numpy integers, e.g. labels written as
    ``list(array)``), ``_codecs.encode`` (latin-1 only) and ``bytes`` (no arguments only), the
    last two being how Python 3 writes bytes at protocol 2. Any other global raises
    :class:`DataError` before it is imported.

    Even the allowed names are never resolved to the real numpy functions: numpy's own
    ``__setstate__`` trusts its input (crafted states can exhaust memory or crash the process),
    so they map to recording stubs. Arrays unpickled by ``_reconstruct`` come back as stub objects;
    pass them through :func:`to_array` to get a validated ``np.ndarray``.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Return the safe stand-in for ``module.name``.

        Raises:
            DataError: for any global not on the allow-list.
        """
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name}: not a numpy array component"
            ) from None


def to_array(obj: object) -> object:
    """Turn an array stub produced by :class:`SafeUnpickler` into a real array; else return it."""
    return obj.resolve() if isinstance(obj, _ArrayStub) else obj


def _prescan(raw: bytes) -> None:
    """Walk the opcodes without executing them; reject lengths that exceed the data.

    CPython's C unpickler allocates before it reads: a declared ``BYTEARRAY8`` length, or a memo
    table sized by the largest ``PUT`` index, so a few lying bytes could request terabytes.
    :func:`pickletools.genops` checks every length-prefixed argument against the bytes that
    remain; memo indices must not exceed the number of opcodes seen (picklers number them
    sequentially).
    """
    try:
        for count, (opcode, arg, pos) in enumerate(pickletools.genops(raw)):
            if opcode.name in _MEMO_PUTS and isinstance(arg, int) and arg > count:
                raise DataError(f"pickle memo index {arg} is out of range")
            if opcode.name == "FRAME" and isinstance(arg, int) and arg > len(raw) - (pos or 0):
                raise DataError(f"pickle frame of {arg} bytes exceeds the file")
    except ValueError as exc:
        raise DataError(f"malformed pickle ({exc})") from exc


def _get(batch: dict[Any, Any], key: str) -> Any:
    if key.encode() in batch:
        return batch[key.encode()]
    if key in batch:
        return batch[key]
    raise DataError(f"missing key {key!r}")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file; returns uint8 images ``[N, 3, 32, 32]`` and int64 ``[N]``."""
    try:
        size = path.stat().st_size
        if size > _MAX_BATCH_BYTES:
            raise DataError(f"{size} bytes is too large for a CIFAR-10 batch")
        raw = path.read_bytes()
        _prescan(raw)
        batch = SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
        if not isinstance(batch, dict):
            raise DataError(f"expected a dict, got {type(batch).__name__}")
        data = to_array(_get(batch, "data"))
        labels_obj = to_array(_get(batch, "labels"))
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise DataError("'data' must be a uint8 array of shape [N, 3072]")
        if data.shape[1] != _PIXELS:
            raise DataError(f"'data' has {data.shape[1]} columns, expected {_PIXELS}")
        if not isinstance(labels_obj, (list, tuple, np.ndarray)):
            raise DataError(f"'labels' must be a list, got {type(labels_obj).__name__}")
        if not all(isinstance(v, (int, np.integer)) for v in labels_obj):
            raise DataError("'labels' must hold integers")
        labels = np.asarray(labels_obj, dtype=np.int64).reshape(-1)
        if labels.shape[0] != data.shape[0]:
            raise DataError(f"{data.shape[0]} images but {labels.shape[0]} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
            raise DataError(f"labels out of range 0..9 (min {labels.min()}, max {labels.max()})")
        images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
        return images, labels
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found; is this a complete {CIFAR10_DIRNAME}?") from exc
    except Exception as exc:  # untrusted input: any decoding failure is a data error
        raise DataError(
            f"{path}: not a valid CIFAR-10 batch ({type(exc).__name__}: {exc})"
        ) from exc


def _resolve_root(root: Path) -> Path:
    return root / CIFAR10_DIRNAME if (root / CIFAR10_DIRNAME).is_dir() else root


def read_cifar10(root: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read CIFAR-10 from the official python-pickle batches.

    Args:
        root: The ``cifar-10-batches-py`` directory or its parent.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 images ``[N, 3, 32, 32]`` (channel-first)
        and int64 labels ``[N]`` in ``0..9``; ``N`` is 50000 / 10000 for the official data.

    Raises:
        DataError: if a batch is missing, is not a valid pickle, contains anything other than
            plain numpy data (e.g. a code-executing global), or has inconsistent shapes/labels.
    """
    base = _resolve_root(Path(root))
    if not base.is_dir():
        raise DataError(f"{base}: CIFAR-10 directory not found")
    train = [_read_batch(base / name) for name in _TRAIN_BATCHES]
    x_test, y_test = _read_batch(base / _TEST_BATCH)
    x_train = np.concatenate([x for x, _ in train], axis=0)
    y_train = np.concatenate([y for _, y in train], axis=0)
    return x_train, y_train, x_test, y_test


def _is_cifar_dir(path: Path) -> bool:
    return all((path / n).is_file() for n in (*_TRAIN_BATCHES, _TEST_BATCH))


def find_cifar10(data_dir: str | Path | None = None) -> Path:
    """Locate a ``cifar-10-batches-py`` directory.

    Search order: ``data_dir`` (itself or its ``cifar-10-batches-py`` child), ``$RLPRUNE_DATA``
    (same), then ``$XDG_CACHE_HOME/rlprune`` (same).

    Args:
        data_dir: Optional directory to look in first.

    Returns:
        The directory holding ``data_batch_1..5`` and ``test_batch``.

    Raises:
        DataError: if none is found; the message says where to extract the official archive.
    """
    bases: list[Path] = []
    if data_dir is not None:
        bases.append(Path(data_dir))
    env = os.environ.get("RLPRUNE_DATA")
    if env:
        bases.append(Path(env))
    bases.append(user_cache_dir())
    looked: list[Path] = []
    for base in bases:
        for cand in (base, base / CIFAR10_DIRNAME):
            looked.append(cand)
            if _is_cifar_dir(cand):
                logger.debug("found CIFAR-10 in %s", cand)
                return cand
    target = Path(data_dir) if data_dir is not None else user_cache_dir()
    raise DataError(
        "CIFAR-10 not found (looked in "
        + ", ".join(str(p) for p in looked)
        + f"); download {CIFAR10_URL} and run `tar -xzf cifar-10-python.tar.gz -C {target}`"
    )
