"""Training, fine-tuning and evaluation loops (plain PyTorch, terminal-only bars, no globals)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from rlprune.config import TrainConfig
from rlprune.data import DatasetSplits, Split, batches
from rlprune.errors import RlpruneError
from rlprune.models import set_layout, training_layout
from rlprune.progress import bar as progress_bar

__all__ = ["evaluate", "fine_tune", "train"]

log = logging.getLogger(__name__)


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, batch_size: int = 256, device: torch.device | str = "cpu"
) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) on ``split``."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in batches(split, batch_size):
        correct += int((model(x.to(device)).argmax(1) == y.to(device)).sum())
    model.train(was_training)
    return 100.0 * correct / max(1, len(split))


def _endless(
    split: Split, batch_size: int, gen: torch.Generator, augment: bool, hflip: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from batches(
            split, batch_size, shuffle=True, generator=gen, augment=augment, hflip=hflip
        )


def _autocast(device: torch.device | str) -> torch.autocast:
    """bf16 autocast on CUDA (no loss scaling needed), a no-op on the CPU."""
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


def _sgd(model: nn.Module, lr: float, momentum: float, wd: float) -> torch.optim.SGD:
    # No weight decay on BN/bias parameters (standard practice, e.g. timm).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              device: torch.device | str, label_smoothing: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Cross-entropy of one batch ``x [B, C, H, W]``, ``y [B]``, and an optimizer step when it
    is finite (in :func:`~rlprune.models.training_layout`). Returns the loss (a 0-d tensor)."""
    with training_layout(model):
        with _autocast(device):
            logits = model(x.to(device))
        loss = F.cross_entropy(logits.float(), y.to(device), label_smoothing=label_smoothing)
        if torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return loss


def train(
    model: nn.Module,
    data: DatasetSplits,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` with SGD + Nesterov and a OneCycle schedule.

    Args:
        model: the network; trained in place (in NHWC when ``cfg.channels_last``) and left at
            its best-validation weights.
        data: splits; only ``train`` and ``val`` are used.
        cfg: hyper-parameters (fractional epochs allowed).
        device: where to train.
        progress: show a progress bar (on a terminal only; every epoch is logged anyway).
        on_epoch: ``callback(epoch, train_loss, val_acc)`` after every epoch (checkpointing).

    Returns:
        Per-epoch history ``[{"epoch", "train_loss", "val_acc"}, ...]``.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    set_layout(model.to(device), cfg.channels_last).train()
    opt = _sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    stream = _endless(data.train, cfg.batch_size, gen, cfg.augment, data.hflip)
    history: list[dict[str, float]] = []
    best = (-1.0, copy.deepcopy(model.state_dict()))
    running = 0.0
    bar = progress_bar(range(total), desc="train", enabled=progress)
    for step in bar:
        loss = _sgd_step(model, opt, *next(stream), device, cfg.label_smoothing)
        if not torch.isfinite(loss):
            raise RlpruneError(f"training diverged (loss={loss.item()}) at step {step}; lower --lr")
        sched.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
        if (step + 1) % steps_per_epoch == 0 or step + 1 == total:
            epoch = len(history) + 1
            val_acc = evaluate(model, data.val, device=device)
            model.train()
            history.append({"epoch": epoch, "train_loss": running, "val_acc": val_acc})
            log.info("epoch %d: train loss %.4f, val acc %.2f%%", epoch, running, val_acc)
            if val_acc > best[0]:
                best = (val_acc, copy.deepcopy(model.state_dict()))
            if on_epoch is not None:
                on_epoch(epoch, running, val_acc)
    model.load_state_dict(best[1])
    model.eval()
    return history


def fine_tune(
    model: nn.Module,
    split: Split,
    steps: int,
    lr: float,
    *,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    hflip: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "fine-tune",
    max_retries: int = 3,
) -> dict[str, float]:
    """Fine-tune for a fixed number of SGD steps with a cosine LR decay.

    A non-finite loss rolls the model back to the state at the start, halves the learning rate
    and starts again (at most ``max_retries`` times), so one unlucky batch after a deep cut
    does not end a long search; the event is logged.

    Returns:
        ``{"loss": smoothed final loss, "lr": learning rate used, "retries": n}``.
    """
    if steps <= 0:
        return {"loss": float("nan"), "lr": lr, "retries": 0.0}
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    start = copy.deepcopy(model.state_dict())
    for attempt in range(max_retries + 1):
        model.to(device).train()
        opt = _sgd(model, lr, 0.9, weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        stream = _endless(split, batch_size, gen, True, hflip)
        running, diverged = float("nan"), False
        for step in progress_bar(range(steps), desc=desc, enabled=progress):
            loss = _sgd_step(model, opt, *next(stream), device)
            if not torch.isfinite(loss):
                diverged = True
                break
            sched.step()
            running = loss.item() if step == 0 else 0.95 * running + 0.05 * loss.item()
        if not diverged:
            model.eval()
            # One line for the whole fine-tune: the bar shows only on a terminal and is erased
            # when done. DEBUG when no progress was asked for (--quiet, ranks other than 0).
            level = logging.INFO if progress else logging.DEBUG
            log.log(level, "%s: %d steps, loss %.4f", desc, steps, running)
            return {"loss": running, "lr": lr, "retries": float(attempt)}
        log.warning("non-finite loss while fine-tuning: rolled back, lr %.3g -> %.3g", lr, lr / 2)
        model.load_state_dict(start)
        lr /= 2
    model.eval()
    raise RlpruneError(f"fine-tuning diverged {max_retries + 1} times; model left unchanged")
