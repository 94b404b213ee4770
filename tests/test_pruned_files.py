"""Tests of pruned-model files and tools: checkpoint and .pt2/ONNX round trips, latency
measurement, and ``rlprune inspect`` (split from test_pruning.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rlprune.checkpoint import load_model, save_checkpoint
from rlprune.data import Split
from rlprune.errors import CheckpointError
from rlprune.models import ModelSpec, build_model
from rlprune.outputs import measure_model
from rlprune.pruning import (
    find_units,
    measure_latency,
    measure_latency_paired,
    remove_channels,
)
from rlprune.pruning.export import export_pt2, load_pt2

from .test_pruning import SIZE, TRACE, _zoo_cached, by_name, inputs, randomise_bn
from .toy import Logged, blocks

# ----------------------------------------------------------------------------- checkpoints
SPEC = ModelSpec("resnet20", 1, 10, (SIZE, SIZE), 0.5)


@pytest.fixture(scope="module")
def pruned_resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """resnet20 with two units physically pruned, saved as a pruned checkpoint."""
    torch.manual_seed(0)
    model = randomise_bn(SPEC.build()).eval()
    for name in ("stem.0", "layers.4.conv1"):
        unit = by_name(find_units(model, TRACE), name)
        remove_channels(model, unit, torch.arange(unit.channels) % 2, TRACE)
    path = tmp_path_factory.mktemp("ckpt") / "pruned.pt"
    save_checkpoint(path, model, SPEC, meta={"note": "test"}, pruned=True)
    return model, path


def test_pruned_checkpoint_roundtrip(pruned_resnet: tuple[nn.Module, Path]) -> None:
    model, path = pruned_resnet
    loaded, spec, meta = load_model(path)
    assert spec == SPEC and meta == {"note": "test"}
    assert not loaded.training
    for m in (model, loaded):
        convs = dict(m.named_modules())
        assert convs["stem.0"].out_channels == 4
        assert convs["layers.4.conv1"].out_channels == 8
    x = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "rlprune-checkpoint" and raw["shapes"]["stem.0"] == [4, 1, 1]


def test_checkpoint_of_other_architecture_fails(
    pruned_resnet: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    _, path = pruned_resnet
    # Pruned resnet20 file into a different architecture: names or state dict do not fit.
    with pytest.raises(CheckpointError):
        load_model(path, model=build_model("vgg-small", 1, 10, SIZE, 0.5))
    with pytest.raises(CheckpointError):
        load_model(path, model=build_model("resnet32", 1, 10, SIZE, 0.5))
    # Unpruned vgg-small file into a resnet20 instance.
    vgg_spec = ModelSpec("vgg-small", 1, 10, (SIZE, SIZE), 0.5)
    vgg_path = save_checkpoint(tmp_path / "vgg.pt", vgg_spec.build(), vgg_spec)
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(vgg_path, model=SPEC.build())


def test_non_rlprune_files_fail(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    with pytest.raises(CheckpointError, match="not an rlprune checkpoint"):
        load_model(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError):
        load_model(garbage)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_pt2_export_matches(pruned_resnet: tuple[nn.Module, Path], tmp_path: Path) -> None:
    model, _ = pruned_resnet
    path = export_pt2(model, TRACE, tmp_path / "model.pt2")
    program = load_pt2(path)
    for batch in (1, 5):
        x = inputs(batch)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- metrics
def test_measure_latency_restores_threads() -> None:
    model, _ = _zoo_cached("vgg-small", 0.5)
    old = torch.get_num_threads()
    threads = 1 if old != 1 else 2
    stats = measure_latency(model, TRACE, batch=2, runs=5, warmup=1, threads=threads)
    assert torch.get_num_threads() == old
    assert stats.median_ms > 0 and stats.iqr_ms >= 0
    assert stats.runs == 5 and stats.batch == 2 and stats.threads == threads
    assert not model.training


def test_paired_latency_alternates_the_models_in_rounds() -> None:
    log: list[str] = []
    a, b = Logged("a", log), Logged("b", log)
    stats = measure_latency_paired((a, b), torch.zeros(1, 1, 2, 2), (1, 2), runs=2, rounds=2)
    assert blocks(log) == ["a", "b"] * 4  # per round, per batch: a, then b
    assert [sorted(s) for s in stats] == [[1, 2], [1, 2]]
    # rounds x batches x (3 warm-up + 2 timed calls); each batch's 2 x 2 timed calls pooled
    assert log.count("a") == log.count("b") == 2 * 2 * (3 + 2)
    assert all(st.runs == 2 * 2 and st.median_ms >= 0 for s in stats for st in s.values())
    assert a.training and b.training  # modes restored


# ----------------------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rlprune", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_inspect(pruned_resnet: tuple[nn.Module, Path], tmp_path: Path) -> None:
    _, path = pruned_resnet
    ok = _cli("inspect", "--checkpoint", str(path))
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert "unit" in lines[0] and "channels" in lines[0]
    assert len(lines) == 1 + 12
    stem = next(line for line in lines if line.split()[1:2] == ["stem.0"])
    assert stem.split()[2] == "4"  # the pruned width
    assert "layers.3.shortcut.0" in ok.stdout

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    bad = _cli("inspect", "--checkpoint", str(garbage))
    assert bad.returncode != 0
    err = bad.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlprune: error:"), bad.stderr


def test_onnx_export_runs_in_onnxruntime(tmp_path: Path) -> None:
    """The pruned model exports to ONNX with a dynamic batch and onnxruntime agrees."""
    ort = pytest.importorskip("onnxruntime")  # a dev dependency: present in `make test`
    from rlprune.pruning.export import export_onnx

    model = build_model("resnet20", 1, 10, 16, width=0.5).eval()
    x = torch.randn(1, 1, 16, 16)
    unit = find_units(model, x)[0]
    remove_channels(model, unit, (torch.arange(unit.channels) % 2 == 0).float(), x)
    path = export_onnx(model, x, tmp_path / "m.onnx")
    assert path is not None and path.exists()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        xb = torch.randn(batch, 1, 16, 16)
        (out,) = sess.run(None, {sess.get_inputs()[0].name: xb.numpy()})
        assert torch.allclose(torch.from_numpy(out), model(xb).detach(), atol=1e-4)


def test_measure_model_skips_latency_when_asked() -> None:
    model, _ = _zoo_cached("vgg-small", 0.5)
    data = Split(torch.randn(20, 1, SIZE, SIZE), torch.randint(0, 10, (20,)))
    full = measure_model(model, data, None, TRACE, latency_runs=3)
    lean = measure_model(model, data, None, TRACE, latency_runs=3, latency=False)
    assert full.latency_b1_ms is not None and full.latency_b64_ms is not None
    assert full.latency_b1_ms > 0 and full.latency_b64_ms > full.latency_b1_ms
    assert not any(k.startswith("latency") for k in lean.to_dict())
    assert lean.val_acc == full.val_acc and lean.macs == full.macs


# ----------------------------------------------------------------------------- memory layout
def _strides_are(model: torch.nn.Module, fmt: torch.memory_format) -> bool:
    """Exact strides, size-1 dims included (what oneDNN reads to pick its kernels)."""
    four = [p for p in model.parameters() if p.dim() == 4]
    return bool(four) and all(
        p.stride() == torch.empty_like(p, memory_format=fmt).stride() for p in four
    )


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2-small"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_surgery_and_reshaping_keep_the_model_layout(name: str, channels_last: bool) -> None:
    """torch-pruning's index_select and apply_shapes' fresh tensors are NCHW; an NHWC model
    must stay NHWC (the fast CPU path), and the values must not change with the layout. On 1-channel
    input every mobilenetv2-small weight is [C, 1, k, k] or [O, I, 1, 1]: contiguous in both
    senses, so only exact strides tell the layout."""
    from rlprune.checkpoint import apply_shapes, capture_shapes
    from rlprune.models import is_channels_last, set_layout

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = set_layout(build_model(name, 1, 10, SIZE, width=0.5).eval(), channels_last)
    assert is_channels_last(model) is channels_last
    x = torch.randn(4, 1, SIZE, SIZE)
    unit = find_units(model, x[:1])[1]
    remove_channels(model, unit, torch.arange(unit.channels) % 2, x[:1])
    assert _strides_are(model, fmt)
    with torch.no_grad():
        ref = model(x)
    fresh = set_layout(build_model(name, 1, 10, SIZE, width=0.5).eval(), channels_last)
    apply_shapes(fresh, capture_shapes(model))
    assert _strides_are(fresh, fmt)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), ref)
