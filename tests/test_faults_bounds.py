"""Small inputs that claim huge sizes, and failures that used to be tracebacks.

Every case ends in one ``rlprune: error:`` line with exit 2, or in a correct result. The bomb
cases run as subprocesses under ``RLIMIT_AS`` (:func:`tests.faultkit.run_cli_capped`): a
regression that allocates what the input claims fails fast instead of eating the machine.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from rlprune.data.folder import MAX_SIDE, read_image_folder
from tests.faultkit import (
    assert_one_error_line,
    run_cli_capped,
    run_main,
)

pytestmark = pytest.mark.faults

TRAIN = ("train", "--model", "vgg-small", "--width", "0.25", "--dataset", "digits")


def _prune(capsys, ckpt: Path, out: Path, *extra: str | Path):
    return run_main(
        capsys, "prune", "--checkpoint", ckpt, "--dataset", "digits", "--out", out, "--quiet",
        *extra,
    )  # fmt: skip


# ----------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-acc-drop", "1e308"], "max_acc_drop"),
        (["--max-acc-drop", "1", "--set", "agent.samples=1000000000"], "agent.samples"),
        (["--max-acc-drop", "1", "--set", "agent.hidden=100000000"], "agent.hidden"),
        (["--max-acc-drop", "1", "--set", "agent.updates=10000000000"], "agent.updates"),
        (["--max-acc-drop", "1", "--seed", "12345678901234567890"], "seed"),
        (["--max-acc-drop", "1", "--seed", "-1"], "seed"),
        (["--max-acc-drop", "1", "--set", "rollout.batch_size=1000000000"], "rollout.batch_size"),
        (["--max-acc-drop", "1", "--set", "reward.guard=1e300"], "reward.guard"),
        (["--target-macs", "0.5", "--set", "reward.budget_penalty=1e308"], "budget_penalty"),
        (["--target-macs", "0.5", "--set", "joint.samples=100000"], "joint.samples"),
        (["--max-acc-drop", "1", "--device", "foo"], "unknown --device 'foo'"),
    ],
)
def test_out_of_bounds_values(
    digits_baseline: Path, tmp_path: Path, capsys, args: list[str], needle: str
) -> None:
    out = tmp_path / "run"
    assert_one_error_line(_prune(capsys, digits_baseline, out, *args), needle)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--epochs", "1e308"], "epochs"),
        (["--seed", "99999999999999999999"], "seed"),
        (["--batch-size", "1000000000"], "batch_size"),
        (["--device", "foo"], "unknown --device"),
    ],
)
def test_out_of_bounds_train_values(tmp_path: Path, capsys, args: list[str], needle: str) -> None:
    out = tmp_path / "base"
    assert_one_error_line(run_main(capsys, *TRAIN, "--out", out, *args), needle)
    assert not out.exists()


def test_long_values_are_cut_in_the_message(digits_baseline: Path, tmp_path: Path, capsys):
    proc = _prune(capsys, digits_baseline, tmp_path / "run", "--set", "strategy=" + "x" * 100_000)
    line = assert_one_error_line(proc, "strategy")
    assert len(line) < 300


def _alias_bomb() -> str:
    """~400 bytes of YAML whose aliases expand to 10^9 nodes once anything walks them."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("seed: *a8")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"seed: 1\nagent: {samples: \xff\xfe}\n", "not UTF-8"),
        (b"1: 2\nseed: 3\n", "config key 1 in '<root>' is not a name"),
        (b"seed: 1" + b"1" * 5000 + b"\n", "cannot be read"),
        (b"seed: " + b"[" * 5000 + b"]" * 5000 + b"\n", "config file"),
    ],
    ids=["not-utf8", "int-key", "5000-digits", "deep-nesting"],
)
def test_unreadable_config_files(
    digits_baseline: Path, tmp_path: Path, capsys, content: bytes, needle: str
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(content)
    out = tmp_path / "run"
    proc = _prune(capsys, digits_baseline, out, "--max-acc-drop", "1", "--config", cfg)
    assert_one_error_line(proc, needle)
    assert not out.exists()


def test_yaml_alias_bomb_is_refused(digits_baseline: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_alias_bomb())
    assert cfg.stat().st_size < 500
    out = tmp_path / "run"
    proc = run_cli_capped(
        "prune", "--checkpoint", digits_baseline, "--dataset", "digits", "--out", out,
        "--max-acc-drop", "1", "--config", cfg, mem_mb=1024, timeout=60,
    )  # fmt: skip
    assert_one_error_line(proc, "YAML aliases", "not allowed")
    assert not out.exists()


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"num_classes": 10**9}, "num_classes must be in"),
        ({"input_size": [10**6, 10**6]}, "input_size must be in"),
        ({"num_classes": 99_999, "width": 4.0}, "does not match the vgg-small architecture"),
        ({"in_channels": "1" * 100_000}, "invalid model spec"),
    ],
    ids=["classes", "input-size", "lying-width", "text"],
)
def test_checkpoint_spec_claiming_a_huge_model(
    digits_baseline: Path, tmp_path: Path, spec: dict, needle: str
) -> None:
    """The spec is checked, and the model built on ``meta`` and compared with the stored
    tensors, before any real allocation."""
    raw = torch.load(digits_baseline, weights_only=True)
    raw["spec"].update(spec)
    bad = tmp_path / "huge.pt"
    torch.save(raw, bad)
    proc = run_cli_capped("inspect", "--checkpoint", bad, mem_mb=1024, timeout=60)
    line = assert_one_error_line(proc, str(bad), needle)
    assert len(line) < 400


def test_disk_full_while_saving(tmp_path: Path) -> None:
    """``torch.save`` reports a full disk as RuntimeError: one line, no partial file."""
    out = tmp_path / "base"
    proc = run_cli_capped(*TRAIN, "--out", out, "--epochs", "0.05", fsize=32 << 10, timeout=120)
    assert_one_error_line(proc, "cannot write", "model.pt", "disk full")
    assert not (out / "model.pt").exists() and not list(out.glob(".*.tmp"))


def test_ctrl_c_inside_a_save_stays_a_ctrl_c(tmp_path: Path) -> None:
    """torch.save's zip writer raises RuntimeError("unexpected pos ...") while a Ctrl-C that hit
    it mid-write unwinds: the KeyboardInterrupt must come out (the CLI exits 130 and resumes),
    not the RuntimeError (exit 1), and no temp file or partial file is left."""
    from rlprune.checkpoint import atomic_write

    def write(f: object) -> None:
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3 vs 2")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "agent.pt", write)
    assert list(tmp_path.iterdir()) == []

    def broken(f: object) -> None:
        raise RuntimeError("unexpected pos 3 vs 2")

    with pytest.raises(RuntimeError, match="unexpected pos"):  # alone, it is not a Ctrl-C
        atomic_write(tmp_path / "agent.pt", broken)
    assert list(tmp_path.iterdir()) == []
    try:  # a save made while handling an earlier Ctrl-C reports its own failure
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with pytest.raises(RuntimeError, match="unexpected pos"):
            atomic_write(tmp_path / "agent.pt", broken)


# ----------------------------------------------------------------------------- data
def _idx_header(dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def _fashion_dir(root: Path, declared: int) -> Path:
    """Fashion-MNIST files whose training images are a gzip bomb: the header declares
    ``declared`` 28x28 images, the stream inflates to 2 GiB (128 gzip members of 16 MiB)."""
    root.mkdir()
    zeros = gzip.compress(bytes(16 << 20), compresslevel=9)
    with open(root / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(gzip.compress(_idx_header((declared, 28, 28))))
        for _ in range(128):
            f.write(zeros)
    small = {"train-labels-idx1-ubyte.gz": (4,), "t10k-images-idx3-ubyte.gz": (4, 28, 28)}
    small["t10k-labels-idx1-ubyte.gz"] = (4,)
    for name, dims in small.items():
        n = 1
        for d in dims:
            n *= d
        (root / name).write_bytes(gzip.compress(_idx_header(dims) + bytes(n)))
    assert (root / "train-images-idx3-ubyte.gz").stat().st_size < 4 << 20
    return root


@pytest.mark.parametrize(
    ("declared", "needle"),
    [(10**9, "above the 1073741824-byte limit"), (100, "trailing bytes")],
    ids=["declares-1e9-images", "declares-100-inflates-to-2GiB"],
)
def test_idx_gzip_bomb(tmp_path: Path, declared: int, needle: str) -> None:
    data = _fashion_dir(tmp_path / "fmnist", declared)
    out = tmp_path / "base"
    proc = run_cli_capped(
        "train", "--model", "vgg-small", "--dataset", "fashion-mnist", "--data-dir", data,
        "--out", out, mem_mb=1024, timeout=60,
    )  # fmt: skip
    assert_one_error_line(proc, "train-images-idx3-ubyte.gz", needle)
    assert not out.exists()


def _digit_tree(root: Path, first: tuple[int, int] | None) -> Path:
    """10 greyscale classes of 8x8 images; with ``first``, the very first image is that big."""
    for c in range(10):
        (root / "train" / f"c{c}").mkdir(parents=True)
        for i in range(4):
            size = first if (c, i) == (0, 0) and first else (8, 8)
            Image.new("L", size, (20 * c + i) % 256).save(root / "train" / f"c{c}" / f"{i}.png")
    return root


def test_huge_first_image_is_resized_per_image(digits_baseline: Path, tmp_path: Path) -> None:
    """An 8000x8000 first image no longer sizes every image (14 GiB): each image is resized
    on its own to the model's 8x8 input, and eval runs."""
    tree = _digit_tree(tmp_path / "images", (8000, 8000))
    proc = run_cli_capped(
        "eval", "--checkpoint", digits_baseline, "--dataset", "image-folder", "--data-dir", tree,
        mem_mb=1280, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "test acc" in proc.stdout


def test_image_above_the_pixel_cap_is_refused(tmp_path: Path, capsys) -> None:
    tree = _digit_tree(tmp_path / "images", (9000, 9000))
    out = tmp_path / "base"
    proc = run_main(
        capsys, "train", "--model", "vgg-small", "--dataset", "image-folder", "--data-dir", tree,
        "--out", out,
    )  # fmt: skip
    assert_one_error_line(proc, "9000x9000", "exceeds the cap")
    assert not out.exists()


def test_without_a_model_images_take_the_first_size_scaled_down(tmp_path: Path) -> None:
    tree = _digit_tree(tmp_path / "images", (4 * MAX_SIDE, 2 * MAX_SIDE))
    data = read_image_folder(tree)
    assert data.x_train.shape[1:] == (1, MAX_SIDE // 2, MAX_SIDE)  # [C, H, W], aspect kept
    data = read_image_folder(tree, input_size=(12, 10))
    assert data.x_train.shape[1:] == (1, 12, 10)


# ----------------------------------------------------------------------------- report.json
def _report(**changes: object) -> dict:
    m = {"val_acc": 90.0, "test_acc": 89.0, "macs": 1e6, "params": 1e4}
    unit = {
        "unit": "features.0", "reward_curve": [0.1, 0.2], "channels_before": 8,
        "channels_after": 4, "chosen": "best", "reward": 0.2, "rollout_acc": 88.0,
        "val_acc": 89.0, "macs": 5e5,
    }  # fmt: skip
    rep = {
        "config": {"reward": {"mode": "accuracy"}},
        "model": {"name": "vgg-small"},
        "baseline": m,
        "pruned": dict(m),
        "units": [unit],
    }
    for path, value in changes.items():
        node: dict = rep
        *parents, last = path.split("__")
        for p in parents:
            node = node[p][0] if p == "units" else node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return rep


@pytest.mark.parametrize(
    ("report", "needle"),
    [
        ([], "top level is not a mapping"),
        (_report(units=KeyError), "units is not a list"),
        (_report(baseline__macs=0), "baseline.macs must be > 0"),
        (_report(pruned__val_acc="90"), "pruned.val_acc is not a number"),
        (_report(units__channels_before=KeyError), "units[0].channels_before"),
        (_report(units__reward_curve=["a"]), "reward_curve"),
        (_report(config=KeyError), "config.reward.mode"),
        (_report(units__det_reward_start=0.1), "units[0].det_reward is missing"),
        ("{not json", "not a valid rlprune report"),
    ],
    ids=[
        "list",
        "no-units",
        "macs-0",
        "string-number",
        "unit-key",
        "curve",
        "config",
        "det-reward",
        "json",
    ],  # fmt: skip
)
def test_malformed_report_json(tmp_path: Path, capsys, report: object, needle: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    text = report if isinstance(report, str) else json.dumps(report)
    (run / "report.json").write_text(text)
    proc = run_main(capsys, "report", run)
    assert_one_error_line(proc, "is not a valid rlprune report", needle)
    assert sorted(os.listdir(run)) == ["report.json"]


def test_valid_report_still_renders(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(_report()))
    proc = run_main(capsys, "report", run)
    assert proc.returncode == 0, proc.stderr
    assert "| MACs | 1.00M | 1.00M |" in (run / "report.md").read_text()
