"""IDX file reader and Fashion-MNIST location, download and loading.

The IDX format (used by MNIST and Fashion-MNIST) is a 4-byte magic ``00 00 <dtype> <ndim>``,
``ndim`` big-endian uint32 dimensions, then the row-major big-endian payload. Files may be
gzip-compressed; compression is detected from the content, not the file name.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from rlprune.errors import DataError

__all__ = [
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_SYSTEM_DIR",
    "FASHION_MNIST_URL",
    "MAX_IDX_BYTES",
    "download_fashion_mnist",
    "find_fashion_mnist",
    "load_fashion_mnist_arrays",
    "read_idx",
    "user_cache_dir",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
"""Official Fashion-MNIST download location (the four ``.gz`` files live directly under it)."""

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the files."""

FASHION_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

FASHION_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
"""SHA-256 of the official Fashion-MNIST files (file name -> lowercase hex digest)."""

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_MAX_DOWNLOAD_BYTES = 256 << 20  # far above the largest Fashion-MNIST file (26 MiB)
MAX_IDX_BYTES = 1 << 30
"""Largest IDX payload read (the header's declared size is checked before any of it is read or
decompressed); Fashion-MNIST's largest is 47 MiB."""
_FASHION_CLASSES = 10


class _Reader(Protocol):
    """Anything with a bytes ``read(size)`` (plain files and :class:`gzip.GzipFile`)."""

    def read(self, size: int = -1, /) -> bytes: ...


def user_cache_dir() -> Path:
    """Return rlprune's per-user cache directory (``$XDG_CACHE_HOME/rlprune``).

    Falls back to ``~/.cache/rlprune`` when ``XDG_CACHE_HOME`` is unset or not absolute. The
    directory is not created.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "rlprune"


def _read_exact(stream: _Reader, n: int) -> bytes:
    """Read up to ``n`` bytes in bounded chunks (a lying header cannot force a huge allocation)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _parse_idx(stream: _Reader, name: str, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    header = _read_exact(stream, 4)
    if len(header) < 4 or header[0] != 0 or header[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic {header.hex() or 'empty'})")
    code, ndim = header[2], header[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX data type code 0x{code:02x}")
    if ndim < 1:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    raw_dims = _read_exact(stream, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header ({ndim} dimensions declared)")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    if expected > max_bytes:
        raise DataError(
            f"{name}: IDX header declares shape {dims} ({expected} bytes), above the "
            f"{max_bytes}-byte limit; refusing to read it"
        )
    # Streamed in chunks (gzip decompressed as it is read), at most one byte past the
    # declared size: a file that decompresses to gigabytes is stopped there.
    payload = bytearray()
    while len(payload) <= expected:  # read one byte past the end to detect trailing data
        chunk = stream.read(min(_CHUNK, expected + 1 - len(payload)))
        if not chunk:
            break
        payload += chunk
    if len(payload) < expected:
        raise DataError(
            f"{name}: truncated IDX payload ({len(payload)} of {expected} bytes for shape {dims})"
        )
    if len(payload) > expected:
        raise DataError(f"{name}: trailing bytes after the IDX payload of shape {dims}")
    arr = np.frombuffer(payload, dtype=dtype).reshape(dims)
    return arr if dtype.isnative or dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read a (optionally gzip-compressed) IDX file into a numpy array.

    Args:
        path: File to read; gzip compression is detected from the first two bytes.
        max_bytes: Largest payload accepted; a header declaring more is refused before any
            payload byte is read or decompressed.

    Returns:
        A writable native-endian array whose shape is the header's dimensions, e.g. uint8
        ``[60000, 28, 28]`` for Fashion-MNIST training images or ``[60000]`` for its labels.

    Raises:
        DataError: if the file is missing, not IDX (bad magic or dtype code), declares more than
            ``max_bytes``, is truncated, has trailing bytes, or is a corrupt gzip stream. The
            message names the file.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            compressed = fh.read(2) == _GZIP_MAGIC
            fh.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                    return _parse_idx(gz, str(p), max_bytes)
            return _parse_idx(fh, str(p), max_bytes)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{p}: file not found") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{p}: cannot read IDX file ({type(exc).__name__}: {exc})") from exc


def _has_all_files(directory: Path) -> bool:
    return all((directory / f).is_file() for f in FASHION_MNIST_FILES)


def _candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    cands: list[Path] = []
    if data_dir is not None:
        cands += [Path(data_dir), Path(data_dir) / "fashion-mnist"]
    env = os.environ.get("RLPRUNE_DATA")
    if env:
        cands += [Path(env), Path(env) / "fashion-mnist"]
    cands += [FASHION_MNIST_SYSTEM_DIR, user_cache_dir() / "fashion-mnist"]
    return cands


def find_fashion_mnist(data_dir: str | Path | None = None) -> Path:
    """Locate a directory holding the four Fashion-MNIST ``.gz`` files.

    Search order: ``data_dir`` (and ``data_dir/fashion-mnist``), ``$RLPRUNE_DATA`` (and its
    ``fashion-mnist`` subdirectory), ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``), then ``$XDG_CACHE_HOME/rlprune/fashion-mnist``.

    Args:
        data_dir: Optional directory to look in first.

    Returns:
        The first directory that contains all of :data:`FASHION_MNIST_FILES`.

    Raises:
        DataError: if no candidate directory has all four files.
    """
    cands = _candidate_dirs(data_dir)
    for cand in cands:
        if _has_all_files(cand):
            logger.debug("found Fashion-MNIST in %s", cand)
            return cand
    raise DataError(
        "Fashion-MNIST not found (looked in "
        + ", ".join(str(c) for c in cands)
        + "); run `sudo apt-get install dataset-fashion-mnist` or pass `--download`"
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _download_one(url: str, final: Path, want: str, timeout: float) -> None:
    """Download ``url`` to ``final`` atomically, verifying its SHA-256 against ``want``."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    except OSError as exc:
        raise DataError(f"cannot write to {final.parent}: {exc}") from exc
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        size = 0
        request = urllib.request.Request(url, headers={"User-Agent": "rlprune"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                size += len(chunk)
                if size > _MAX_DOWNLOAD_BYTES:
                    raise DataError(f"{url}: download exceeds {_MAX_DOWNLOAD_BYTES} bytes")
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != want:
            raise DataError(
                f"{url}: SHA-256 mismatch (got {got}, expected {want}); the download is corrupt "
                "or the mirror is wrong, retry or use `sudo apt-get install dataset-fashion-mnist`"
            )
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: download failed with HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DataError(f"{url}: download failed ({exc}); check the network or the URL") from exc
    finally:
        tmp.unlink(missing_ok=True)


def download_fashion_mnist(
    dest: str | Path, *, base_url: str = FASHION_MNIST_URL, timeout: float = 30.0
) -> Path:
    """Download the four Fashion-MNIST files into ``dest`` and verify their SHA-256.

    Each file is streamed to a temporary file in ``dest``, fsynced, checked against
    :data:`FASHION_MNIST_SHA256` and only then renamed into place with :func:`os.replace`, so a
    failed or corrupt download never leaves a partial or unverified file behind. Files already
    present with the right hash are kept and not downloaded again.

    Args:
        dest: Target directory (created if needed).
        base_url: URL prefix the file names are appended to.
        timeout: Socket timeout in seconds for each request.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: on a network or HTTP error (e.g. 404), a checksum mismatch, or if ``dest``
            cannot be written.
    """
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create download directory {dest}: {exc}") from exc
    base = base_url if base_url.endswith("/") else base_url + "/"
    for fname in FASHION_MNIST_FILES:
        final = dest / fname
        want = FASHION_MNIST_SHA256[fname]
        if final.is_file() and _sha256_file(final) == want:
            logger.info("%s already present and verified", final)
            continue
        logger.info("downloading %s%s -> %s", base, fname, final)
        _download_one(base + fname, final, want, timeout)
    return dest


def load_fashion_mnist_arrays(
    root: str | Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode the four Fashion-MNIST files in ``root`` and check that they fit together.

    Args:
        root: Directory holding :data:`FASHION_MNIST_FILES`.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 images ``[N, 1, 28, 28]`` and int64
        labels ``[N]`` in ``0..9`` (``N`` = 60000 / 10000 for the official files).

    Raises:
        DataError: if a file is corrupt, images are not 3-D, or image and label counts differ.
    """
    root = Path(root)
    out: list[np.ndarray] = []
    for prefix in ("train", "t10k"):
        img_path = root / f"{prefix}-images-idx3-ubyte.gz"
        lbl_path = root / f"{prefix}-labels-idx1-ubyte.gz"
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(
                f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataError(f"{lbl_path}: expected uint8 labels [N], got {labels.dtype}")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{img_path} has {images.shape[0]} images but {lbl_path} has "
                f"{labels.shape[0]} labels; re-install or re-download the dataset"
            )
        if labels.size and int(labels.max()) >= _FASHION_CLASSES:
            raise DataError(f"{lbl_path}: label {int(labels.max())} out of range 0..9")
        out += [images[:, None, :, :], labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]
