"""Progress bars draw only on a terminal; without one, training still logs what it did."""

from __future__ import annotations

import io
import logging

import pytest
import torch
from torch import nn

from rlprune import progress
from rlprune.train import fine_tune
from tests.toy import toy_split


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("tty", "enabled", "drawn"), [(True, True, True), (False, True, False), (True, False, False)]
)
def test_bar_draws_only_when_enabled_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tty: bool, enabled: bool, drawn: bool
) -> None:
    stream = _Stream(tty)
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress.bar(range(5), desc="work", enabled=enabled)
    assert bar.disable is not drawn
    assert list(bar) == list(range(5))  # a disabled bar still iterates
    bar.set_postfix(loss="0.1")  # and takes postfixes
    bar.close()
    assert ("work" in stream.getvalue()) is drawn
    assert "\r" not in stream.getvalue() or drawn


def test_stderr_without_isatty_counts_as_no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", object())
    assert not progress.on_terminal()


def test_fine_tune_logs_one_line_instead_of_a_bar(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stream = _Stream(False)
    monkeypatch.setattr("sys.stderr", stream)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 4)
    )
    with caplog.at_level(logging.INFO, logger="rlprune"):
        fine_tune(model, toy_split(32, 0), 3, 0.01, batch_size=8, progress=True, desc="ft x")
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records if r.name == "rlprune.train"]
    assert len(lines) == 1 and lines[0].startswith("ft x: 3 steps, loss ")
