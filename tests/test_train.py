"""A short real training run on real data clearly beats chance."""

import torch

from rlprune.config import TrainConfig
from rlprune.data import load_dataset
from rlprune.models import build_model
from rlprune.train import evaluate, fine_tune, train


def test_short_training_on_digits_beats_chance() -> None:
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = build_model("vgg-small", 1, 10, data.input_size, width=0.5)
    before = evaluate(model, data.test)
    history = train(model, data, TrainConfig(epochs=3, seed=0), progress=False)
    after = evaluate(model, data.test)
    assert len(history) == 3
    assert after > 80.0 > before + 30  # chance is 10%


def test_fine_tune_rolls_back_on_nan(caplog) -> None:
    data = load_dataset("synthetic")
    model = build_model("vgg-small", data.in_channels, data.num_classes, data.input_size, 0.25)
    # An absurd learning rate makes the loss non-finite; fine_tune must roll back and lower it.
    out = fine_tune(model, data.train, steps=5, lr=1e12, max_retries=40)
    assert out["retries"] > 0 and out["lr"] < 1e12
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "rolled back" in caplog.text
