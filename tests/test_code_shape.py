"""The code stays readable: short functions, short files, comments that do not cite a tracker.

Limits from the developers' guide: functions under 80 lines (the main loop reads like the
algorithm in a screenful), files under ~400 lines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rlprune"
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 420  # "~400": a little slack for a docstring, never a second module


def _sources() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20  # the package was found
    return files


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_no_file_is_much_longer_than_400_lines() -> None:
    big = [
        f"{p.relative_to(SRC)} ({n} lines)"
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    ]
    assert not big, big


def test_comments_cite_papers_not_issue_numbers() -> None:
    pattern = re.compile(r"\bissues? #?\d+", re.IGNORECASE)
    hits = [
        f"{p.relative_to(SRC)}:{i}"
        for p in _sources()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits
