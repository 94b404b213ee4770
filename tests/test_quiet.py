"""Known third-party chatter is dropped around rlprune's calls, and passes through with -v."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rlprune.models import build_model, set_layout
from rlprune.pruning import find_units, remove_channels
from rlprune.pruning.export import export_onnx, export_pt2
from rlprune.quiet import quiet_third_party

ONNX_LOGGER = "torch.onnx._internal.exporter._registration"
NOISE = ("No complete tensor found", "torchvision is not installed", "LeafSpec")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def onnx_log() -> Iterator[_Records]:
    """Records of the ONNX exporter's own logger (torch's loggers need not propagate)."""
    handler, logger = _Records(), logging.getLogger(ONNX_LOGGER)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
def verbose() -> Iterator[None]:
    """What ``rlprune -v`` does: the rlprune logger at DEBUG."""
    logger = logging.getLogger("rlprune")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield
    logger.setLevel(old)


def _emit() -> None:
    """Each known noise as torch emits it, plus a warning of rlprune's own."""
    warnings.warn_explicit(
        "No complete tensor found in the group! Returning the first one.",
        UserWarning,
        "_package.py",
        415,
        module="torch.export.pt2_archive._package",
    )
    warnings.warn_explicit(
        "`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, "copyreg.py", 105
    )
    warnings.warn("rlprune: a warning of our own", UserWarning, stacklevel=1)
    logging.getLogger(ONNX_LOGGER).warning("torchvision is not installed. Skipping %s", "nms")


def _emit_all(quiet: bool = True) -> list[str]:
    """The warning messages seen; the recorder is outside the block, as a user's filters are."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_third_party() if quiet else contextlib.nullcontext():
            _emit()
    return [str(w.message) for w in seen]


def test_known_noise_is_dropped_and_own_warnings_kept(onnx_log: _Records) -> None:
    filters = list(warnings.filters)
    assert _emit_all() == ["rlprune: a warning of our own"]
    assert onnx_log.messages == []
    # Nothing stays installed after the block.
    assert warnings.filters == filters
    assert logging.getLogger(ONNX_LOGGER).filters == []
    assert len(_emit_all(quiet=False)) == 3 and len(onnx_log.messages) == 1


def test_a_matching_message_from_another_module_is_kept() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_third_party():
            warnings.warn_explicit(
                "No complete tensor found in the group", UserWarning, "mine.py", 1, module="mine"
            )
    assert len(seen) == 1


def test_verbose_lets_everything_through(onnx_log: _Records, verbose: None) -> None:
    assert len(_emit_all()) == 3
    assert onnx_log.messages == ["torchvision is not installed. Skipping nms"]


def _pruned_nhwc_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """A cut NHWC model: what makes torch.export.save warn about incomplete tensors."""
    torch.manual_seed(0)
    model = set_layout(build_model("vgg-small", 1, 10, 16, width=0.25).eval(), True)
    x = torch.randn(2, 1, 16, 16)
    unit = find_units(model, x[:1])[0]
    keep = torch.ones(unit.channels)
    keep[: unit.channels // 2] = 0
    remove_channels(model, unit, keep, x[:1])
    return model, x


def _export(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> tuple[list[str], str]:
    model, x = _pruned_nhwc_model()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert export_pt2(model, x, tmp_path / "model.pt2") is not None
        assert export_onnx(model, x, tmp_path / "model.onnx") is not None
    return [str(w.message) for w in seen], capfd.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exports_are_quiet(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], onnx_log: _Records
) -> None:
    pytest.importorskip("onnx")
    seen, err = _export(tmp_path, capfd)
    for needle in NOISE:
        assert not any(needle in m for m in seen), seen
        assert needle not in err
    assert onnx_log.messages == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exports_with_verbose_show_the_noise(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], onnx_log: _Records, verbose: None
) -> None:
    pytest.importorskip("onnx")
    seen, _ = _export(tmp_path, capfd)
    assert any("No complete tensor found" in m for m in seen), seen
    assert any("torchvision is not installed" in m for m in onnx_log.messages)
