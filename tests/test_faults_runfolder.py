"""Run folders: an identity marker, no clobbering, no writing through links.

A run folder records what made it (config hash, input checkpoint and dataset fingerprints);
``--resume`` refuses other inputs, a folder that is not a run's is never written into,
``--overwrite`` replaces only an earlier run of the same command, and a symbolic link planted
where rlprune writes is refused. Every refusal is one ``rlprune: error:`` line and exit 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from rlprune.runfolder import MARKER
from tests.faultkit import (
    FAST_PRUNE,
    assert_one_error_line,
    report_masks,
    run_main,
)

pytestmark = pytest.mark.faults


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (links as their target text), to prove nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = str(p.readlink()).encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _prune(capsys, ckpt: Path, out: Path, *extra: str | Path):
    return run_main(
        capsys, "prune", "--checkpoint", ckpt, "--dataset", "digits", "--out", out,
        "--max-acc-drop", "1", "--quiet", *FAST_PRUNE, *extra,
    )  # fmt: skip


def _digits_like_folder(root: Path) -> Path:
    """An image folder shaped like digits (10 classes, greyscale 8x8) with other pixels."""
    for c in range(10):
        (root / "train" / str(c)).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), (25 * c + 3 * i) % 256).save(
                root / "train" / str(c) / f"{i}.png"
            )
    return root


def test_marker_holds_config_checkpoint_and_dataset(finished_run: Path) -> None:
    marker = json.loads((finished_run / MARKER).read_text())
    assert marker["command"] == "prune"
    assert all(len(marker[k]) >= 32 for k in ("config", "checkpoint", "dataset"))


@pytest.mark.parametrize("change", ["checkpoint", "dataset", "config", "all"])
def test_resume_refuses_other_inputs(
    digits_baseline: Path, finished_run: Path, tmp_path: Path, capsys, change: str
) -> None:
    """The finished run is left byte for byte as it was: no model.pt, report or baseline of
    another checkpoint or dataset is written over it."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = _snapshot(out)
    ckpt, extra = digits_baseline, []
    if change in ("checkpoint", "all"):
        raw = torch.load(digits_baseline, weights_only=True)
        first = next(iter(raw["state_dict"]))
        raw["state_dict"][first] = raw["state_dict"][first] + 0.01
        ckpt = tmp_path / "other.pt"
        torch.save(raw, ckpt)
    if change in ("dataset", "all"):
        tree = _digits_like_folder(tmp_path / "images")
        extra += ["--dataset", "image-folder", "--data-dir", str(tree)]
    if change in ("config", "all"):
        extra += ["--seed", "7"]
    proc = _prune(capsys, ckpt, out, "--resume", *extra)
    needle = {"checkpoint": "input checkpoint", "dataset": "dataset", "config": "config"}
    if change == "all":
        assert_one_error_line(proc, "config and input checkpoint and dataset")
    else:
        assert_one_error_line(proc, "was started with a different " + needle[change])
    assert _snapshot(out) == before


def test_a_folder_of_user_files_is_never_written(
    digits_baseline: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("model.pt", "model.onnx", "report.md", "metrics.jsonl"):
        (out / name).write_text(f"my own {name}")
    before = _snapshot(out)
    for flags in ([], ["--resume"], ["--overwrite"]):
        proc = _prune(capsys, digits_baseline, out, *flags)
        assert_one_error_line(proc, "is not an rlprune run folder")
    proc = run_main(
        capsys, "train", "--model", "vgg-small", "--dataset", "digits", "--out", out, "--overwrite"
    )
    assert_one_error_line(proc, "is not an rlprune run folder")
    assert _snapshot(out) == before


def test_a_stale_state_folder_is_not_resumed(
    digits_baseline: Path, finished_run: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "stale"
    out.mkdir()
    shutil.copytree(finished_run / "state", out / "state")
    before = _snapshot(out)
    for flags in ([], ["--seed", "3"], ["--resume"]):
        assert_one_error_line(_prune(capsys, digits_baseline, out, *flags), "not an rlprune run")
    assert _snapshot(out) == before


def test_an_existing_run_needs_resume_or_overwrite(
    digits_baseline: Path, finished_run: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = _snapshot(out)
    proc = _prune(capsys, digits_baseline, out)
    assert_one_error_line(proc, "already holds an rlprune prune run", "--resume", "--overwrite")
    proc = _prune(capsys, digits_baseline, out, "--resume", "--overwrite")
    assert_one_error_line(proc, "choose one")
    assert _snapshot(out) == before


def test_overwrite_replaces_the_run_and_keeps_user_files(
    digits_baseline: Path, finished_run: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "notes.txt").write_text("mine")
    (out / "state" / "agent.pt").write_bytes(b"stale, must not be resumed")
    proc = _prune(capsys, digits_baseline, out, "--overwrite", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert (out / "notes.txt").read_text() == "mine"
    agent_state = out / "state" / "agent.pt"
    assert not agent_state.exists() or agent_state.read_bytes() != b"stale, must not be resumed"
    assert json.loads((out / "report.json").read_text())["config"]["seed"] == 1
    assert len(report_masks(out)) == len(report_masks(finished_run))


def test_train_and_prune_refuse_each_others_folders(
    digits_baseline: Path, finished_run: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    train = ("train", "--model", "vgg-small", "--width", "0.25", "--dataset", "digits")
    proc = run_main(capsys, *train, "--out", run, "--overwrite", "--epochs", "0.05")
    assert_one_error_line(proc, "holds an rlprune prune run", "`rlprune train` needs its own")
    assert _snapshot(run) == before

    base = tmp_path / "base"
    proc = run_main(capsys, *train, "--out", base, "--epochs", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((base / MARKER).read_text())["command"] == "train"
    trained = _snapshot(base)
    proc = _prune(capsys, digits_baseline, base, "--overwrite")
    assert_one_error_line(proc, "holds an rlprune train run")
    proc = run_main(capsys, *train, "--out", base, "--epochs", "0.05")
    assert_one_error_line(proc, "already holds an rlprune train run", "--overwrite")
    assert _snapshot(base) == trained
    proc = run_main(capsys, *train, "--out", base, "--epochs", "0.05", "--overwrite")
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- links
@pytest.mark.parametrize("name", ["metrics.jsonl", "report.json", "state/final.pt", "state"])
def test_a_planted_link_is_not_written_through(
    digits_baseline: Path, finished_run: Path, tmp_path: Path, capsys, name: str
) -> None:
    out, victim = tmp_path / "run", tmp_path / "victim"
    shutil.copytree(finished_run, out)
    (out / "report.json").unlink()  # so the resumed run writes its outputs again
    target = out / name
    if name == "state":
        shutil.move(out / "state", victim)
    else:
        target.unlink(missing_ok=True)
        victim.write_text("precious\n")
    target.symlink_to(victim)
    before = _snapshot(victim) if victim.is_dir() else victim.read_text()
    proc = _prune(capsys, digits_baseline, out, "--resume")
    assert_one_error_line(proc, "is a symbolic link", "does not write through links")
    after = _snapshot(victim) if victim.is_dir() else victim.read_text()
    assert after == before


def test_report_does_not_write_through_a_planted_link(
    finished_run: Path, tmp_path: Path, capsys
) -> None:
    out, victim = tmp_path / "run", tmp_path / "victim"
    shutil.copytree(finished_run, out)
    victim.write_text("precious\n")
    (out / "walk.png").unlink()
    (out / "walk.png").symlink_to(victim)
    proc = run_main(capsys, "report", out)
    assert_one_error_line(proc, "walk.png is a symbolic link")
    assert victim.read_text() == "precious\n"


def test_an_older_unmarked_run_is_not_marked_by_a_refused_resume(
    digits_baseline: Path, finished_run: Path, tmp_path: Path, capsys
) -> None:
    # A run folder from before the marker: --resume with another config is refused on the
    # stored config.yaml, and the folder is left exactly as it was (no marker written).
    out = tmp_path / "old"
    shutil.copytree(finished_run, out)
    (out / MARKER).unlink()
    before = _snapshot(out)
    proc = _prune(capsys, digits_baseline, out, "--resume", "--seed", "3")
    assert_one_error_line(proc, "different config")
    assert _snapshot(out) == before
