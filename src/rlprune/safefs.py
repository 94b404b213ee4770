"""File operations that never follow a symbolic link planted where rlprune writes.

A run folder is the user's to read, but a link inside it (``metrics.jsonl -> ~/.bashrc``) must
not redirect rlprune's writes elsewhere: every file rlprune writes or appends to in a run folder
is refused when a link stands in its place, and appends open with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from rlprune.errors import RlpruneError

__all__ = ["LinkError", "open_append", "refuse_link"]


class LinkError(RlpruneError):
    """A symbolic link stands where rlprune would write a file."""


def refuse_link(path: str | Path) -> None:
    """Raise :class:`LinkError` if ``path`` is a symbolic link (dangling or not).

    Callers check the folders they create inside a run (``state/``) the same way. The folder
    the user names with ``--out`` may itself be a link: that is the user's own choice, not
    something planted inside the run.
    """
    if Path(path).is_symlink():
        raise LinkError(
            f"{path} is a symbolic link; rlprune does not write through links "
            "(remove the link or choose another --out)"
        )


def open_append(path: str | Path) -> IO[str]:
    """Open ``path`` for appending text, creating it; a link in its place is refused."""
    path = Path(path)
    refuse_link(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if path.is_symlink():  # planted between the check and the open
            raise LinkError(
                f"{path} is a symbolic link; rlprune does not write through links"
            ) from e
        raise RlpruneError(f"cannot write {path}: {e.strerror or e}") from e
    return os.fdopen(fd, "a")
