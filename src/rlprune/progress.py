"""Progress bars that appear only on a terminal.

tqdm redraws its line with carriage returns; written to a file or a CI log, every redraw stays
as a line of its own. Library code therefore draws bars only when stderr (where tqdm writes) is
a terminal, and otherwise leaves the story to its ``logging`` lines (one per epoch, one per
fine-tune).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

__all__ = ["bar", "on_terminal"]

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether stderr, where the bars go, is an interactive terminal (checked at call time)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty is not None and isatty())


def bar(
    iterable: Iterable[T],
    *,
    desc: str,
    enabled: bool = True,
    total: int | None = None,
    leave: bool = False,
) -> tqdm[T]:
    """``tqdm(iterable)`` drawn only when ``enabled`` and stderr is a terminal.

    A disabled bar still iterates and accepts ``set_postfix``, so callers need no branch.

    Args:
        iterable: what to iterate over.
        desc: label in front of the bar.
        enabled: the caller's wish (e.g. ``not --quiet``, or rank 0 only).
        total: length when ``iterable`` has no ``len``.
        leave: keep the finished bar on screen.
    """
    return tqdm(
        iterable, desc=desc, total=total, leave=leave, disable=not (enabled and on_terminal())
    )
