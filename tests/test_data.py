"""Tests of rlprune.data: IDX/CIFAR/image-folder readers and load_dataset (batches: test_batches.py)."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlprune.data import (
    DATASETS,
    batches,
    load_dataset,
    read_cifar10,
    read_idx,
)
from rlprune.errors import DataError

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = True, extra: bytes = b"") -> Path:
    """Write ``arr`` as an IDX file (big-endian), optionally gzipped, with ``extra`` appended."""
    big = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    header = bytes([0, 0, _IDX_CODES[big.dtype], arr.ndim])
    header += np.asarray(arr.shape, dtype=">u4").tobytes()
    raw = header + big.tobytes() + extra
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_fake_cifar(root: Path, n: int = 12, *, protocol: int = 2, str_keys: bool = False) -> Path:
    """Write a fake ``cifar-10-batches-py`` under ``root`` in the official format."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n) + i) % 10]
        keys = (
            ("data", "labels", "batch_label") if str_keys else (b"data", b"labels", b"batch_label")
        )
        batch = {keys[0]: data, keys[1]: labels, keys[2]: f"batch {i}".encode()}
        (base / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return base


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """Assemble a batch exactly as Python 2's cPickle wrote the official files (protocol 2)."""

    def sstr(b: bytes) -> bytes:  # SHORT_BINSTRING: a Python-2 str
        return b"U" + bytes([len(b)]) + b

    minus1 = b"J" + (-1).to_bytes(4, "little", signed=True)
    n, width = data.shape
    dtype = b"cnumpy\ndtype\n" + sstr(b"u1") + b"K\x00K\x01\x87R"
    dtype += b"(K\x03" + sstr(b"|") + b"NNN" + minus1 + minus1 + b"K\x00tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + sstr(b"b")
    array += b"\x87R(K\x01M" + n.to_bytes(2, "little") + b"M" + width.to_bytes(2, "little")
    array += b"\x86" + dtype + b"\x89T" + len(data.tobytes()).to_bytes(4, "little")
    array += data.tobytes() + b"tb"
    label_ops = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + sstr(b"data") + array + sstr(b"labels") + label_ops + b"u."


def test_read_cifar10_python2_pickles(tmp_path: Path) -> None:
    base = write_fake_cifar(tmp_path, n=4)
    data = np.random.default_rng(3).integers(0, 256, (5, 3072), dtype=np.uint8)
    blob = py2_cifar_pickle(data, [9, 0, 3, 3, 1])
    reference = pickle.loads(blob, encoding="bytes")  # numpy's own reading of the same bytes
    np.testing.assert_array_equal(reference[b"data"], data)
    (base / "test_batch").write_bytes(blob)
    _, _, x_te, y_te = read_cifar10(base)
    np.testing.assert_array_equal(x_te, data.reshape(5, 3, 32, 32))
    assert y_te.tolist() == [9, 0, 3, 3, 1]
    # numpy-integer labels (list(array)) pickle via numpy's `scalar`, which is allowed too
    np_labels = {b"data": data, b"labels": list(np.array([1, 2, 3, 4, 5], dtype=np.int64))}
    (base / "test_batch").write_bytes(pickle.dumps(np_labels, protocol=2))
    assert read_cifar10(base)[3].tolist() == [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist", data_dir=FMNIST)


# --------------------------------------------------------------------------- IDX / Fashion-MNIST


@needs_fmnist
def test_read_idx_real_fashion_mnist_files() -> None:
    x = read_idx(FMNIST / "train-images-idx3-ubyte.gz")
    y = read_idx(FMNIST / "train-labels-idx1-ubyte.gz")
    yt = read_idx(FMNIST / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (60000,) and yt.shape == (10000,)
    assert set(np.unique(y).tolist()) == set(range(10))
    assert np.bincount(y).tolist() == [6000] * 10
    assert 0 < x.mean() < 255 and x.flags.writeable


@needs_fmnist
def test_load_fashion_mnist_splits_and_normalisation(fmnist) -> None:
    assert (len(fmnist.train), len(fmnist.val), len(fmnist.test)) == (54000, 6000, 10000)
    assert fmnist.num_classes == 10 and fmnist.in_channels == 1 and fmnist.input_size == (28, 28)
    assert fmnist.hflip and len(fmnist.class_names) == 10
    assert fmnist.train.images.shape == (54000, 1, 28, 28)
    assert fmnist.train.images.dtype == torch.float32 and fmnist.train.labels.dtype == torch.int64
    # Stats come from the train part only: normalised train is exactly ~N(0, 1) ...
    assert abs(fmnist.train.images.mean().item()) < 1e-4
    assert abs(fmnist.train.images.std().item() - 1.0) < 1e-3
    # ... and match the known Fashion-MNIST pixel statistics.
    assert fmnist.mean[0] == pytest.approx(0.286, abs=0.005)
    assert fmnist.std[0] == pytest.approx(0.353, abs=0.005)
    assert fmnist.test.labels.bincount().tolist() == [1000] * 10


def test_read_idx_roundtrip_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for arr, gz in [
        (rng.integers(0, 256, (5, 4, 3), dtype=np.uint8), True),
        (rng.integers(-(2**31), 2**31 - 1, (7,), dtype=np.int32), False),
        (rng.standard_normal((3, 2)).astype(np.float32), True),
    ]:
        got = read_idx(write_idx(tmp_path / "f.idx", arr, gz=gz))
        assert got.dtype.isnative and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: b"\x01" + raw[1:], "bad magic"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "data type"),
        (lambda raw: raw[:-5], "truncated"),
        (lambda raw: raw[:6], "truncated IDX header"),
        (lambda raw: raw + b"\x00", "trailing bytes"),
        (lambda raw: b"", "bad magic"),
    ],
    ids=["magic", "dtype", "truncated", "header", "trailing", "empty"],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, gz: bool, mutate, message: str) -> None:
    raw = write_idx(tmp_path / "ok", np.zeros((4, 3, 3), np.uint8), gz=False).read_bytes()
    bad = mutate(raw)
    path = tmp_path / "bad-idx"
    path.write_bytes(gzip.compress(bad) if gz else bad)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert "bad-idx" in str(info.value)


def test_read_idx_rejects_broken_gzip_and_missing_file(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "g.gz", np.zeros((50, 8), np.uint8)).read_bytes()
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.gz")


def _fake_fmnist(root: Path, n_train: int, n_train_labels: int, max_label: int = 9) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for prefix, n_img, n_lbl in (("train", n_train, n_train_labels), ("t10k", 20, 20)):
        images = rng.integers(0, 256, (n_img, 28, 28), dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        labels = (np.arange(n_lbl) % (max_label + 1)).astype(np.uint8)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def test_fashion_mnist_count_mismatch_and_bad_labels(tmp_path: Path) -> None:
    ok = load_dataset("fashion-mnist", data_dir=_fake_fmnist(tmp_path / "ok", 40, 40))
    assert (len(ok.train), len(ok.val), len(ok.test)) == (36, 4, 20)
    with pytest.raises(DataError, match="40 images but .* 39 labels"):
        load_dataset("fashion-mnist", data_dir=_fake_fmnist(tmp_path / "mismatch", 40, 39))
    with pytest.raises(DataError, match="out of range"):
        load_dataset("fashion-mnist", data_dir=_fake_fmnist(tmp_path / "lbl", 40, 40, 11))


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("protocol, str_keys", [(2, False), (5, False), (4, True)])
def test_read_cifar10_fake(tmp_path: Path, protocol: int, str_keys: bool) -> None:
    base = write_fake_cifar(tmp_path, n=12, protocol=protocol, str_keys=str_keys)
    for root in (tmp_path, base):
        x_tr, y_tr, x_te, y_te = read_cifar10(root)
        assert x_tr.shape == (60, 3, 32, 32) and x_tr.dtype == np.uint8
        assert y_tr.shape == (60,) and x_te.shape == (12, 3, 32, 32) and y_te.shape == (12,)
        assert y_tr.dtype == np.int64 and y_tr.min() >= 0 and y_tr.max() <= 9
    # Channel-major layout: first 1024 values are the red plane of image 0.
    first = pickle.loads((base / "data_batch_1").read_bytes())
    data = first[b"data" if not str_keys else "data"]
    np.testing.assert_array_equal(x_tr[0, 0], data[0, :1024].reshape(32, 32))
    np.testing.assert_array_equal(x_tr[0, 2], data[0, 2048:].reshape(32, 32))


def test_load_dataset_cifar10(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.in_channels == 3 and ds.input_size == (32, 32) and len(ds.mean) == 3
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54, 6, 12) and ds.hflip


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_is_refused(tmp_path: Path) -> None:
    base = write_fake_cifar(tmp_path)
    marker = tmp_path / "PWNED"
    evil = {b"data": _Evil(marker), b"labels": [0]}
    (base / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os)\.system"):
        read_cifar10(base)
    assert not marker.exists()
    (base / "data_batch_3").write_bytes(pickle.dumps({b"data": eval, b"labels": []}))
    with pytest.raises(DataError, match="refusing to unpickle builtins.eval"):
        read_cifar10(base)


@pytest.mark.parametrize(
    "batch, message",
    [
        ({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, "3072"),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, "uint8"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "4 images but 3 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "out of range"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, "integers"),
        ({b"labels": [0]}, "missing key 'data'"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_cifar_malformed_batches(tmp_path: Path, batch: object, message: str) -> None:
    base = write_fake_cifar(tmp_path)
    (base / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=message):
        read_cifar10(base)


def test_cifar_missing_or_garbage_file(tmp_path: Path) -> None:
    base = write_fake_cifar(tmp_path)
    (base / "data_batch_2").write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="data_batch_2"):
        read_cifar10(base)
    (base / "data_batch_2").unlink()
    with pytest.raises(DataError, match="not found"):
        read_cifar10(base)


# --------------------------------------------------------------------------- other datasets


def test_digits_and_fixed_test_split() -> None:
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=1)
    assert a.input_size == (8, 8) and a.in_channels == 1 and a.num_classes == 10
    assert len(a.train) + len(a.val) + len(a.test) == 1797 and len(a.test) == 359
    assert not a.hflip
    assert torch.equal(a.test.labels, b.test.labels)  # test split does not depend on seed
    assert not torch.equal(a.val.labels, b.val.labels)  # val carve does
    small = load_dataset("digits", max_train=100)
    assert len(small.train) == 100 and abs(small.train.images.mean().item()) < 1e-5


@pytest.fixture
def one_thread():
    """Tiny models train far faster single-threaded (and immune to a busy CI machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_synthetic_is_learnable() -> None:
    ds = load_dataset("synthetic")
    assert ds.input_size == (16, 16) and ds.num_classes == 4 and not ds.hflip
    assert (len(ds.train), len(ds.val), len(ds.test)) == (720, 80, 200)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(16, 4),
    )  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        for x, y in batches(ds.train, 64, shuffle=True, generator=gen):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    with torch.no_grad():
        acc = (net(ds.test.images).argmax(1) == ds.test.labels).float().mean().item()
    assert acc > 0.9


def _png_tree(root: Path, split: str, per_class: int, mode: str = "L", size=(10, 6)) -> None:
    rng = np.random.default_rng(len(str(root)) + per_class)
    for cls in ("zebra", "ant"):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
            img.save(root / split / cls / f"{i}.png")


def test_image_folder(tmp_path: Path) -> None:
    _png_tree(tmp_path, "train", 10)
    _png_tree(tmp_path, "test", 2)
    Image.new("L", (20, 12)).save(tmp_path / "train" / "ant" / "big.png")  # resized to 10x6
    (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")
    ds = load_dataset("image-folder", data_dir=tmp_path)
    assert ds.class_names == ("ant", "zebra") and ds.num_classes == 2
    assert ds.in_channels == 1 and ds.input_size == (6, 10) and ds.hflip
    assert len(ds.train) + len(ds.val) == 21 and len(ds.test) == 4
    # One RGB image makes the whole dataset RGB; no test/ -> seeded 20% holdout.
    _png_tree(tmp_path / "rgb", "train", 10)
    Image.new("RGB", (10, 6), (255, 0, 0)).save(tmp_path / "rgb" / "train" / "ant" / "red.png")
    rgb = load_dataset("image-folder", data_dir=tmp_path / "rgb")
    assert rgb.in_channels == 3 and len(rgb.test) == 4 and len(rgb.mean) == 3


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("image-folder")
    with pytest.raises(DataError, match="no class subdirectories"):
        load_dataset("image-folder", data_dir=tmp_path)
    _png_tree(tmp_path, "train", 3)
    (tmp_path / "train" / "ant" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset("image-folder", data_dir=tmp_path)
    (tmp_path / "train" / "ant" / "broken.png").unlink()
    _png_tree(tmp_path, "test", 1)
    (tmp_path / "test" / "bee").mkdir()
    with pytest.raises(DataError, match="bee"):
        load_dataset("image-folder", data_dir=tmp_path)
    tiny = tmp_path / "tiny"
    _png_tree(tiny, "train", 1)
    with pytest.raises(DataError, match="too few examples"):
        load_dataset("image-folder", data_dir=tiny)


def test_load_dataset_argument_errors() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASETS)
    for bad in (0.0, 0.6, -0.1):
        with pytest.raises(DataError, match="val_fraction"):
            load_dataset("synthetic", val_fraction=bad)
    with pytest.raises(DataError, match="max_train"):
        load_dataset("synthetic", max_train=1)
