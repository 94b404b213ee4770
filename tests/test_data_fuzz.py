"""Fuzz tests: untrusted IDX files and CIFAR pickles only ever fail with DataError."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlprune.data import read_cifar10, read_idx
from rlprune.errors import DataError

pytestmark = pytest.mark.faults

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_ARR = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
VALID_IDX = bytes([0, 0, 0x08, 3]) + np.asarray(_ARR.shape, ">u4").tobytes() + _ARR.tobytes()
VALID_IDX_GZ = gzip.compress(VALID_IDX)
_CIFAR_N = 3


def _valid_batch(protocol: int) -> bytes:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (_CIFAR_N, 3072), dtype=np.uint8)
    return pickle.dumps({b"data": data, b"labels": [1, 2, 3], b"batch_label": b"x"}, protocol)


VALID_CIFAR = {p: _valid_batch(p) for p in (2, 5)}


def _check_idx(path: Path, blob: bytes) -> None:
    path.write_bytes(blob)
    try:
        arr = read_idx(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(arr, np.ndarray)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fuzz") / "cifar-10-batches-py"
    base.mkdir()
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        (base / name).write_bytes(VALID_CIFAR[2])
    return base


def _check_cifar(base: Path, blob: bytes) -> None:
    (base / "test_batch").write_bytes(blob)
    try:
        x_tr, y_tr, x_te, y_te = read_cifar10(base)
    except DataError:
        return
    assert x_te.shape[1:] == (3, 32, 32) and x_te.dtype == np.uint8
    assert len(x_te) == len(y_te) and (len(y_te) == 0 or 0 <= y_te.min() <= y_te.max() <= 9)
    assert len(x_tr) == 5 * _CIFAR_N


@FUZZ
@given(blob=st.binary(max_size=300))
def test_idx_random_bytes(tmp_path: Path, blob: bytes) -> None:
    _check_idx(tmp_path / "random.idx", blob)
    _check_idx(tmp_path / "random.idx.gz", gzip.compress(blob))


@FUZZ
@given(data=st.data())
def test_idx_truncations_always_fail(tmp_path: Path, data: st.DataObject) -> None:
    valid = data.draw(st.sampled_from([VALID_IDX, VALID_IDX_GZ]))
    cut = data.draw(st.integers(0, len(valid) - 1))
    path = tmp_path / "cut.idx"
    path.write_bytes(valid[:cut])
    with pytest.raises(DataError, match="cut.idx"):
        read_idx(path)


@FUZZ
@given(data=st.data())
def test_idx_mutations(tmp_path: Path, data: st.DataObject) -> None:
    valid = bytearray(data.draw(st.sampled_from([VALID_IDX, VALID_IDX_GZ])))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(valid) - 1))
        valid[pos] = data.draw(st.integers(0, 255))
    tail = data.draw(st.binary(max_size=8))
    _check_idx(tmp_path / "mut.idx", bytes(valid) + tail)


def test_idx_valid_inputs_succeed(tmp_path: Path) -> None:
    for blob in (VALID_IDX, VALID_IDX_GZ):
        (tmp_path / "ok").write_bytes(blob)
        np.testing.assert_array_equal(read_idx(tmp_path / "ok"), _ARR)


@FUZZ
@given(blob=st.binary(max_size=400))
def test_cifar_random_bytes(cifar_dir: Path, blob: bytes) -> None:
    _check_cifar(cifar_dir, blob)
    _check_cifar(cifar_dir, b"\x80\x02" + blob)  # looks like a protocol-2 pickle


@FUZZ
@given(data=st.data())
def test_cifar_truncations_always_fail(cifar_dir: Path, data: st.DataObject) -> None:
    valid = VALID_CIFAR[data.draw(st.sampled_from([2, 5]))]
    cut = data.draw(st.integers(0, len(valid) - 1))
    (cifar_dir / "test_batch").write_bytes(valid[:cut])
    with pytest.raises(DataError, match="test_batch"):
        read_cifar10(cifar_dir)


@FUZZ
@given(data=st.data())
def test_cifar_mutations(cifar_dir: Path, data: st.DataObject) -> None:
    valid = bytearray(VALID_CIFAR[data.draw(st.sampled_from([2, 5]))])
    # Mutate mostly the structure (first/last bytes), not just pixel values.
    for _ in range(data.draw(st.integers(1, 4))):
        region = data.draw(st.sampled_from(["head", "tail", "any"]))
        lo, hi = {"head": (0, 200), "tail": (len(valid) - 120, len(valid) - 1)}.get(
            region, (0, len(valid) - 1)
        )
        valid[data.draw(st.integers(lo, hi))] = data.draw(st.integers(0, 255))
    _check_cifar(cifar_dir, bytes(valid))


def test_cifar_valid_inputs_succeed(cifar_dir: Path) -> None:
    for blob in VALID_CIFAR.values():
        (cifar_dir / "test_batch").write_bytes(blob)
        x_tr, y_tr, x_te, y_te = read_cifar10(cifar_dir)
        assert x_te.shape == (_CIFAR_N, 3, 32, 32) and y_te.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    "module, name",
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("subprocess", "Popen"),
        ("numpy", "load"),
        ("numpy.testing", "assert_equal"),
        ("pickle", "loads"),
    ],
)
def test_cifar_dangerous_globals_refused(cifar_dir: Path, module: str, name: str) -> None:
    # GLOBAL opcode, then call it with an empty tuple: refused before resolution, never called.
    blob = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    (cifar_dir / "test_batch").write_bytes(blob)
    with pytest.raises(DataError, match=f"refusing to unpickle {module}.{name}"):
        read_cifar10(cifar_dir)


class _LyingArray:
    """Pickles as numpy's own _reconstruct + a crafted __setstate__ state."""

    def __init__(self, state: tuple) -> None:
        self.state = state

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), self.state)


@pytest.mark.parametrize(
    "data, message",
    [
        (_LyingArray((1, (10**12, 3072), np.dtype("u1"), False, b"\0" * 10)), "does not match"),
        (_LyingArray((1, (2, -5), np.dtype("u1"), False, b"")), "bad array shape"),
        (_LyingArray((1, (3,), np.dtype("u1"), False, [1, 2, 3])), "raw bytes"),
        (np.array([1, "a"], dtype=object), "unsupported dtype"),
        (np.zeros(3, dtype=[("a", "u1"), ("b", "u1")]), "unsupported dtype"),
    ],
    ids=["huge-shape", "negative-dim", "object-list", "object-dtype", "structured"],
)
def test_cifar_crafted_array_states(cifar_dir: Path, data: object, message: str) -> None:
    blob = pickle.dumps({b"data": data, b"labels": [0, 1, 2]}, protocol=2)
    (cifar_dir / "test_batch").write_bytes(blob)
    with pytest.raises(DataError, match=message):
        read_cifar10(cifar_dir)


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x80\x05\x96" + (2**47).to_bytes(8, "little") + b"abc.", "malformed pickle"),
        (b"\x80\x02N" + b"r" + (2**31 - 1).to_bytes(4, "little") + b".", "memo index"),
        (b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"N.", "frame"),
    ],
    ids=["bytearray8-length", "memo-index", "frame-length"],
)
def test_cifar_allocation_bombs_rejected_cheaply(
    cifar_dir: Path, blob: bytes, message: str
) -> None:
    # Each declares terabytes (or a 16 GiB memo table) in a few bytes; must fail before allocating.
    (cifar_dir / "test_batch").write_bytes(blob)
    with pytest.raises(DataError, match=message):
        read_cifar10(cifar_dir)
