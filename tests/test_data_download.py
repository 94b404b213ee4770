"""Tests of Fashion-MNIST location and SHA-256-verified download against a loopback server."""

from __future__ import annotations

import functools
import hashlib
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import rlprune.data.idx as idx_mod
import rlprune.data.registry as registry_mod
from rlprune.data import (
    FASHION_MNIST_FILES,
    FASHION_MNIST_SHA256,
    download_fashion_mnist,
    find_fashion_mnist,
    load_dataset,
    read_idx,
)
from rlprune.errors import DataError

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not all((FMNIST / f).is_file() for f in FASHION_MNIST_FILES),
    reason="Debian package dataset-fashion-mnist not installed",
)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Serve good/ (official copies), bad-last/ and bad-first/ (one file altered), missing/."""
    root = tmp_path_factory.mktemp("srv")
    for sub in ("good", "bad-last", "bad-first", "missing"):
        (root / sub).mkdir()
        for fname in FASHION_MNIST_FILES:
            shutil.copy(FMNIST / fname, root / sub / fname)
    for sub, fname in (
        ("bad-last", FASHION_MNIST_FILES[-1]),
        ("bad-first", FASHION_MNIST_FILES[0]),
    ):
        data = bytearray((root / sub / fname).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (root / sub / fname).write_bytes(bytes(data))
    (root / "missing" / FASHION_MNIST_FILES[2]).unlink()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def no_local_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Hide the system copy, $RLPRUNE_DATA and the real user cache; returns the fake cache."""
    monkeypatch.setattr(idx_mod, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.delenv("RLPRUNE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "rlprune" / "fashion-mnist"


def test_hashes_match_official_files() -> None:
    for fname in FASHION_MNIST_FILES:
        assert _sha256(FMNIST / fname) == FASHION_MNIST_SHA256[fname]


def test_download_success_verifies_and_skips_existing(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    assert download_fashion_mnist(dest, base_url=server + "good", timeout=10) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(FASHION_MNIST_FILES)
    for fname in FASHION_MNIST_FILES:
        assert _sha256(dest / fname) == FASHION_MNIST_SHA256[fname]
    assert read_idx(dest / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
    # Verified files are not fetched again: a URL that would 404 still succeeds.
    mtimes = {f: (dest / f).stat().st_mtime_ns for f in FASHION_MNIST_FILES}
    download_fashion_mnist(dest, base_url=server + "does-not-exist/")
    assert {f: (dest / f).stat().st_mtime_ns for f in FASHION_MNIST_FILES} == mtimes


def test_download_replaces_a_corrupt_existing_file(server: str, tmp_path: Path) -> None:
    target = tmp_path / FASHION_MNIST_FILES[1]
    target.write_bytes(b"stale partial download")
    download_fashion_mnist(tmp_path, base_url=server + "good")
    assert _sha256(target) == FASHION_MNIST_SHA256[FASHION_MNIST_FILES[1]]


@pytest.mark.parametrize("sub, kept", [("bad-last", 3), ("bad-first", 0)])
def test_checksum_mismatch_leaves_no_file(server: str, tmp_path: Path, sub: str, kept: int) -> None:
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        download_fashion_mnist(dest, base_url=server + sub)
    left = sorted(p.name for p in dest.iterdir())
    assert left == sorted(FASHION_MNIST_FILES[:kept])  # verified files only, no temp files
    bad = FASHION_MNIST_FILES[-1] if sub == "bad-last" else FASHION_MNIST_FILES[0]
    assert bad not in left


def test_http_404_and_unreachable_server(server: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        download_fashion_mnist(tmp_path / "a", base_url=server + "missing")
    assert not any(p.name.endswith(".part") for p in (tmp_path / "a").iterdir())
    with socket.socket() as sock:  # a port with no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DataError, match="download failed"):
        download_fashion_mnist(tmp_path / "b", base_url=f"http://127.0.0.1:{port}/", timeout=2)
    with pytest.raises(DataError):
        download_fashion_mnist(tmp_path / "c", base_url="not-a-url")


def test_find_search_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_local_copies: Path
) -> None:
    def populate(d: Path) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        for fname in FASHION_MNIST_FILES:
            (d / fname).touch()
        return d

    with pytest.raises(DataError) as info:
        find_fashion_mnist(tmp_path / "empty")
    msg = str(info.value)
    assert "sudo apt-get install dataset-fashion-mnist" in msg and "--download" in msg
    assert "\n" not in msg
    cache = populate(no_local_copies)
    assert find_fashion_mnist() == cache
    env = populate(tmp_path / "env" / "fashion-mnist")
    monkeypatch.setenv("RLPRUNE_DATA", str(tmp_path / "env"))
    assert find_fashion_mnist() == env
    explicit = populate(tmp_path / "explicit")
    assert find_fashion_mnist(explicit) == explicit
    assert find_fashion_mnist(tmp_path / "nowhere") == env  # falls through to the next place


def test_load_dataset_download_flag(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_local_copies: Path
) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "data")
    calls: list[Path] = []

    def fake_download(dest: str | Path) -> Path:
        calls.append(Path(dest))
        return download_fashion_mnist(dest, base_url=server + "good")

    monkeypatch.setattr(registry_mod, "download_fashion_mnist", fake_download)
    ds = load_dataset("fashion-mnist", download=True, max_train=1000)
    assert calls == [no_local_copies]  # default destination: the user cache
    assert len(ds.train) == 1000 and len(ds.test) == 10000
    load_dataset("fashion-mnist", download=True, max_train=10)
    assert len(calls) == 1  # found in the cache the second time
