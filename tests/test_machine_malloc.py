"""steady_malloc: large blocks stay on glibc's heap (no mmap per layer output while timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# In a fresh process (the setting is process-wide): malloc 8 MB, and count glibc's mmapped
# blocks (mallinfo2().hblks) while it is held, before and after steady_malloc().
_PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, json
    from rlprune.machine import malloc_mode, steady_malloc

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    libc.mallinfo2.restype = Info

    # a fixed threshold (glibc's starting 128 KiB) instead of the self-adjusting one, which
    # frees during start-up may have raised above 8 MB
    assert libc.mallopt(-3, 128 << 10) == 1

    def mapped_while_held():
        base = libc.mallinfo2().hblks
        p = libc.malloc(8 << 20)
        held = libc.mallinfo2().hblks - base
        libc.free(p)
        return held

    out = {"before": mapped_while_held(), "mode_before": malloc_mode()}
    out["ok"] = steady_malloc()
    out["after"] = mapped_while_held()
    out["mode_after"] = malloc_mode()
    print(json.dumps(out))
    """
)


def _has_mallinfo2() -> bool:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return bool(name) and hasattr(ctypes.CDLL(name), "mallinfo2")


GLIBC = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _has_mallinfo2(), reason="glibc >= 2.33 only"
)


def _env() -> dict[str, str]:
    """This environment without glibc malloc settings, with src/ first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


@GLIBC
def test_steady_malloc_keeps_an_8_mb_block_off_mmap() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "before": 1,  # glibc's default: an 8 MB block is its own mapping
        "mode_before": "system",
        "ok": True,
        "after": 0,  # steady: it comes from the heap
        "mode_after": "steady",
    }


def test_a_profiled_table_records_the_malloc_mode(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from rlprune.pruning.latency import LatencyLUT
    from rlprune.pruning.profile import profile_latency

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten()).eval()
    lut = profile_latency(net, torch.randn(1, 1, 8, 8), (1,), threads=1, runs=3)
    assert lut.machine["malloc"] in ("system", "steady")
    path = lut.save(tmp_path / "lut.json")
    assert LatencyLUT.load(path).machine["malloc"] == lut.machine["malloc"]


@GLIBC
def test_cli_profile_steady_malloc_is_recorded_in_the_table(tmp_path: Path) -> None:
    from rlprune.checkpoint import save_checkpoint
    from rlprune.models import ModelSpec

    spec = ModelSpec("vgg-small", 1, 10, (8, 8), width=0.25)
    save_checkpoint(tmp_path / "m.pt", spec.build(), spec)
    argv = [sys.executable, "-m", "rlprune", "profile", "--checkpoint", str(tmp_path / "m.pt"),
            "--batch-size", "1", "--threads", "1", "--steady-malloc", "--out",
            str(tmp_path / "lut.json")]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "steady malloc" in proc.stdout
    assert json.loads((tmp_path / "lut.json").read_text())["machine"]["malloc"] == "steady"


@pytest.mark.parametrize("here", ["system", "steady"])
def test_a_table_timed_under_another_allocator_is_named(
    here: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses

    import torch

    from rlprune.config import PruneConfig, RewardConfig
    from rlprune.runstate import RunDir
    from rlprune.search import costs
    from tests.test_latency import _toy_lut
    from tests.toy import ToyNet

    lut = _toy_lut()
    lut = dataclasses.replace(lut, machine={**lut.machine, "malloc": "steady"})
    path = lut.save(tmp_path / "lut.json")
    rc = RewardConfig(mode="budget", efficiency="latency", target_latency=0.5,
                      latency_table=str(path))  # fmt: skip
    monkeypatch.setattr(costs, "malloc_mode", lambda: here)
    with caplog.at_level("WARNING", logger="rlprune"):
        got = costs.search_lut(
            ToyNet(),
            torch.rand(1, 4, 4, 4),
            PruneConfig(reward=rc),
            RunDir(tmp_path / "run"),
            False,
        )
    assert got is not None and got.machine["malloc"] == "steady"
    warned = [r.getMessage() for r in caplog.records if "malloc" in r.getMessage()]
    if here == "steady":
        assert warned == []
    else:
        assert (
            len(warned) == 1 and "timed under steady malloc, this process runs system" in warned[0]
        )
