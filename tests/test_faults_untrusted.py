"""Untrusted files: no code in a checkpoint, state file or export ever runs, and hostile content
is one clear error. (The CIFAR/IDX parsers are fuzzed in tests/test_data_fuzz.py.)"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

import rlprune
from rlprune.config_load import _NoAliasLoader
from rlprune.errors import RlpruneError
from rlprune.runstate import RunDir
from tests.faultkit import (
    assert_one_error_line,
    cli_env,
    prune_argv,
    report_masks,
    run_cli,
    run_cli_capped,
    run_main,
)

pytestmark = pytest.mark.faults

SRC = Path(rlprune.__file__).parent


class Payload:
    """Unpickling this creates ``path``: the marker proves code from a file ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil(path: Path, marker: Path, **fields) -> Path:
    """A file that looks like an rlprune checkpoint/state dict but carries ``Payload``."""
    torch.save({"format": "rlprune-checkpoint", "version": 1, **fields, "x": Payload(marker)}, path)
    return path


# ----------------------------------------------------------------------------- source audit
def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            out.append((name, node))
    return out


def _kw(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def test_every_load_in_src_is_safe() -> None:
    """torch.load only with weights_only=True; no raw pickle/yaml.load; no allow_pickle."""
    torch_loads = yaml_loads = 0
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        for name, call in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(SRC)}:{call.lineno} {name}"
            if name in ("torch.load", "torch.serialization.load"):
                torch_loads += 1
                if _kw(call, "weights_only") is not True:
                    problems.append(where + " without weights_only=True")
            elif name == "yaml.load" and ast.unparse(call.keywords[0].value) == "_NoAliasLoader":
                yaml_loads += 1  # a SafeLoader subclass (asserted below)
            elif name in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load"):
                problems.append(where)
            elif name in ("np.load", "numpy.load") and _kw(call, "allow_pickle") not in (
                None,
                False,
            ):
                problems.append(where + " with allow_pickle")
            elif name.endswith("Unpickler") and name != "SafeUnpickler":
                problems.append(where)
    assert problems == []
    assert torch_loads >= 2  # the audit sees checkpoint.py and runstate.py
    assert yaml_loads == 1 and issubclass(_NoAliasLoader, yaml.SafeLoader)


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("command", ["eval", "inspect"])
def test_malicious_checkpoint_is_refused(
    digits_baseline: Path, tmp_path: Path, command: str
) -> None:
    marker = tmp_path / "PWNED"
    ckpt = torch.load(digits_baseline, weights_only=True)
    bad = _evil(tmp_path / "evil.pt", marker, spec=ckpt["spec"], state_dict=ckpt["state_dict"])
    extra = ["--dataset", "digits"] if command == "eval" else []
    proc = run_cli(command, "--checkpoint", bad, *extra)
    line = assert_one_error_line(proc, "holds code", "io.open", "was refused")
    assert "weights_only" not in proc.stderr and "pickle" not in line  # no unsafe advice
    assert not marker.exists()


def test_malicious_checkpoint_to_prune_writes_nothing(tmp_path: Path, capsys) -> None:
    marker, out = tmp_path / "PWNED", tmp_path / "run"
    bad = _evil(tmp_path / "evil.pt", marker)
    proc = run_main(
        capsys, "prune", "--checkpoint", bad, "--dataset", "digits", "--out", out, "--quiet"
    )
    assert_one_error_line(proc, "holds code", "was refused")
    assert not marker.exists() and not out.exists()


def _tamper(ckpt: dict, case: str) -> object:
    if case == "huge-shape":
        return {**ckpt, "shapes": {"features.0": [2**40, 1, 1]}}
    if case == "text-shape":
        return {**ckpt, "shapes": {"features.0": ["8", 1, 1]}}
    if case == "shapes-list":
        return {**ckpt, "shapes": [8, 1, 1]}
    if case == "meta-list":
        return {**ckpt, "meta": [1, 2]}
    if case == "spec-text":
        return {**ckpt, "spec": "vgg-small"}
    if case == "no-header":
        return {"state_dict": ckpt["state_dict"]}
    if case == "version-99":
        return {**ckpt, "version": 99}
    if case == "a-tensor":
        return torch.zeros(3)
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("huge-shape", "exceeds the architecture"),
        ("text-shape", "'shapes' must map"),
        ("shapes-list", "'shapes' must map"),
        ("meta-list", "'meta' must be a mapping"),
        ("spec-text", "'spec' must be a mapping"),
        ("no-header", "not an rlprune checkpoint"),
        ("version-99", "unsupported checkpoint version"),
        ("a-tensor", "not an rlprune checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ("random-bytes", "not a readable checkpoint (corrupt pickle"),
        ("empty", "not a readable checkpoint"),
    ],
)
def test_hostile_checkpoint_content(
    digits_baseline: Path, tmp_path: Path, capsys, case: str, needle: str
) -> None:
    path = tmp_path / "bad.pt"
    raw = digits_baseline.read_bytes()
    if case == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif case == "random-bytes":
        path.write_bytes(bytes(range(256)) * 64)
    elif case == "empty":
        path.write_bytes(b"")
    else:
        torch.save(_tamper(torch.load(digits_baseline, weights_only=True), case), path)
    proc = run_main(capsys, "eval", "--checkpoint", path, "--dataset", "digits")
    assert_one_error_line(proc, str(path), needle)


# ----------------------------------------------------------------------------- run state
def test_malicious_state_files_are_refused_on_resume(
    digits_baseline: Path, finished_run: Path, tmp_path: Path
) -> None:
    """Poisoned state/*.pt: each refused with one warning line, the run goes on from the
    previous good copy and ends with the same masks; the payload never runs."""
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(finished_run, out)
    (out / "report.json").unlink()
    poisoned = [out / "state" / n for n in ("model.pt", "agent.pt", "final.pt")]
    for path in poisoned:
        _evil(path, marker, shapes={}, state_dict={}, records=[], agent={}, unit="", progress={})
    proc = subprocess.run(
        prune_argv(digits_baseline, out, "--resume"), capture_output=True, text=True, env=cli_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    for path in poisoned:
        refused = [ln for ln in proc.stderr.splitlines() if f"{path} " in ln]
        assert len(refused) == 1, proc.stderr
        assert "holds code (it asks to import io.open) and was refused" in refused[0]
        assert "weights_only" not in refused[0]
    assert "Traceback" not in proc.stderr
    assert report_masks(out) == report_masks(finished_run)


def test_state_file_without_the_expected_keys_is_skipped(finished_run: Path, tmp_path) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    torch.save({"hello": 1}, out / "state" / "model.pt")  # loadable, but not a search state
    state = RunDir(out).load_state("model.pt")
    assert state is not None and state["records"]  # the .prev copy


# ----------------------------------------------------------------------------- exports
def test_load_pt2_refuses_pickled_payloads(finished_run: Path, tmp_path: Path) -> None:
    from rlprune.pruning.export import load_pt2

    marker = tmp_path / "PWNED"
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    with zipfile.ZipFile(finished_run / "model.pt2") as src:
        entries = {name: src.read(name) for name in src.namelist()}
    cfg_name = next(n for n in entries if n.endswith("weights/model_weights_config.json"))
    cfg = json.loads(entries[cfg_name])
    first = next(iter(cfg["config"].values()))
    first["use_pickle"] = True  # "this weight is a pickle": torch.load(weights_only=False)
    entries[cfg_name] = json.dumps(cfg).encode()
    entries[cfg_name.rsplit("/", 1)[0] + "/" + first["path_name"]] = payload.getvalue()
    bad = tmp_path / "evil.pt2"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_STORED) as dst:
        for name, data in entries.items():
            dst.writestr(name, data)
    error: Exception | None = None
    try:
        load_pt2(bad)
    except Exception as e:
        error = e
    assert not marker.exists(), "loading the .pt2 ran code from the file"
    assert isinstance(error, RlpruneError), error


def test_tampered_state_shapes_are_checked_like_checkpoints(
    digits_baseline: Path, finished_run: Path, tmp_path: Path
) -> None:
    """A state/model.pt claiming a 2^40-wide layer and an agent.pt claiming a 10^9-input policy
    are skipped (one warning each) for the previous good copies, under a memory cap: nothing is
    allocated from their claims, and the run ends with the same masks."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "report.json").unlink()
    walk = torch.load(out / "state" / "model.pt", weights_only=True)
    first = next(iter(walk["shapes"]))
    walk["shapes"][first] = [2**40, *walk["shapes"][first][1:]]
    torch.save(walk, out / "state" / "model.pt")
    inside = torch.load(out / "state" / "agent.pt", weights_only=True)
    inside["agent"]["in_dim"] = 10**9
    torch.save(inside, out / "state" / "agent.pt")
    argv = prune_argv(digits_baseline, out, "--resume")[3:]  # drop "python -m rlprune"
    proc = run_cli_capped(*argv, mem_mb=1536, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("model.pt", "agent.pt"):
        lines = [ln for ln in proc.stderr.splitlines() if f"state/{name} does not fit" in ln]
        assert len(lines) == 1, proc.stderr
    assert report_masks(out) == report_masks(finished_run)


def test_a_pickled_call_of_a_blocked_module_is_named_as_code(tmp_path: Path, capsys) -> None:
    """torch words this refusal differently (no "WeightsUnpickler error:"); it is still named
    as code, with none of torch's advice to load it unsafely."""

    class System:
        def __reduce__(self):
            return (os.system, ("true",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": "rlprune-checkpoint", "version": 1, "x": System()}, bad)
    proc = run_main(capsys, "eval", "--checkpoint", bad, "--dataset", "digits")
    assert_one_error_line(proc, "holds code", "system", "was refused")
    assert "weights_only" not in proc.stderr
