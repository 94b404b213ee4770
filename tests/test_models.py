"""Zoo models: forward/backward on 1- and 3-channel inputs; checkpoint round trip."""

import pytest
import torch

from rlprune.checkpoint import load_checkpoint, load_model, save_checkpoint
from rlprune.errors import CheckpointError, ConfigError
from rlprune.models import MODELS, ModelSpec, build_model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("cin", [1, 3])
def test_forward_backward(name: str, cin: int) -> None:
    width = 0.25 if name.startswith("vgg1") else 0.5
    for size in (8, 20):
        model = build_model(name, cin, 7, size, width=width)
        x = torch.randn(2, cin, size, size)
        out = model(x)
        assert out.shape == (2, 7)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_classifier_is_the_last_linear() -> None:
    for name in MODELS:
        model = build_model(name, 1, 10, 16, width=0.25)
        assert isinstance(model.classifier, torch.nn.Linear)
        assert model.classifier.out_features == 10


def test_spec_validation() -> None:
    with pytest.raises(ConfigError, match="valid: vgg-small"):
        ModelSpec("vgg-huge", 1, 10, (28, 28))
    with pytest.raises(ConfigError):
        ModelSpec("vgg-small", 2, 10, (28, 28))
    with pytest.raises(ConfigError):
        ModelSpec("vgg-small", 1, 10, (4, 28))


def test_checkpoint_round_trip_is_exact(tmp_path) -> None:
    spec = ModelSpec("resnet20", 3, 10, (16, 16), width=0.5)
    model = spec.build().eval()
    path = save_checkpoint(tmp_path / "m.pt", model, spec, meta={"note": "x"})
    loaded, spec2, meta = load_model(path)
    x = torch.randn(3, 3, 16, 16)
    assert spec2 == spec and meta == {"note": "x"}
    assert torch.equal(model(x), loaded(x))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "rlprune-checkpoint"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_not_a_checkpoint(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="not an rlprune checkpoint"):
        load_checkpoint(bad)
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
