"""The joint search's final choice: which whole-network mask is cut and fine-tuned.

Candidates are compared as structures, not as weights: each is cut from the ORIGINAL weights
and gets the same short recovery (``joint.rerank_steps`` SGD steps on one data stream); a
challenger replaces the incumbent only if McNemar's paired test on validation images no reward
saw favours it (z > ``joint.rerank_z``), so a tie keeps the incumbent.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from rlprune.env.joint import JointBatch, JointEnv, hits
from rlprune.search.runtime import derive_seed
from rlprune.search.session import Session

__all__ = [
    "RERANK_STREAM",
    "Choice",
    "choose",
    "fair_pick",
    "held_out",
    "mcnemar_z",
    "recovered_hits",
    "rerank",
]

log = logging.getLogger(__name__)

RERANK_STREAM = 1 << 26  # seed tag of the final choice's recovery stream


@dataclasses.dataclass(frozen=True)
class Choice:
    """The final mask: the learnt policy's or, if it does no better on held-out images, the
    one the policy started from (so the search never ends below its prior).

    Attributes:
        mask: ``[N]`` the chosen whole-network mask.
        chosen: ``"joint"`` (learnt) or ``"prior"`` (the start).
        learned: the learnt deterministic mask scored on the reward set.
    """

    mask: torch.Tensor
    chosen: str
    learned: JointBatch


def choose(s: Session, env: JointEnv, start: torch.Tensor, learned: torch.Tensor) -> Choice:
    """Keep the learnt mask only if it is strictly more accurate than the start mask on the
    validation images outside the reward set (with the weights as the episodes left them; both
    masks are near the ones those weights were trained under)."""
    scored = env.score_full(learned)
    if torch.equal(start, learned):
        log.info("joint: the learnt mask is the start mask")
        return Choice(learned, "joint", scored)
    images = held_out(s, env)
    a, b = env.score_full(learned, images), env.score_full(start, images)
    won = float(a.accs[0]) > float(b.accs[0])
    log.info(
        "joint: held-out accuracy %.2f%% learnt vs %.2f%% start (%d images): keep the %s mask",
        a.accs[0], b.accs[0], len(images[1]), "learnt" if won else "start",
    )  # fmt: skip
    return Choice(learned, "joint", scored) if won else Choice(start, "prior", scored)


def rerank(
    s: Session,
    env: JointEnv,
    start: torch.Tensor,
    learned: torch.Tensor,
    original: dict[str, torch.Tensor],
    start_hits: torch.Tensor | None = None,
) -> Choice:
    """Choose between the learnt and the start mask after the same short recovery of each
    (``joint.rerank_steps`` SGD steps, cosine learning rate, one data stream) of a copy cut
    from the ``original`` weights, on held-out validation images; restores the original
    weights. Neither mask profits from weights the episodes trained under it, so the choice is
    between structures, and the recoveries cost what the pruned networks cost. ``start_hits``:
    the start's recovered correctness if :func:`fair_pick` measured it already."""
    scored = env.score_full(learned)
    s.model.load_state_dict(original)
    if torch.equal(start, learned):
        log.info("joint: the learnt mask is the start mask")
        return Choice(learned, "joint", scored)
    mask, _ = fair_pick(s, env, [("start", start), ("learnt", learned)], original, start_hits)
    return Choice(learned, "joint", scored) if mask is learned else Choice(start, "prior", scored)


def recovered_hits(
    s: Session,
    env: JointEnv,
    mask: torch.Tensor,
    original: dict[str, torch.Tensor],
    images: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Which ``images`` ``[M]`` (bool) a copy of the network cut by ``mask [N]`` from the
    ``original`` weights classifies right after ``joint.rerank_steps`` fine-tune steps on the
    stream ``derive_seed(seed, RERANK_STREAM)``."""
    model = env.cut_copy(mask, original)
    seed = derive_seed(s.cfg.seed, RERANK_STREAM)
    s.runtime.tune(model, seed, s.cfg.joint.rerank_steps, "re-rank")
    return hits(model.eval(), images, s.cfg.rollout.batch_size)


def mcnemar_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """McNemar's paired statistic ``(n_ab - n_ba) / sqrt(n_ab + n_ba)`` of two classifiers'
    per-image correctness ``[M]`` (bool), ``n_ab`` the images only ``a`` gets right; > 0 when
    ``a`` is the better, about N(0, 1) when they are equally good (0 when they never differ)."""
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return 0.0 if only_a + only_b == 0 else (only_a - only_b) / math.sqrt(only_a + only_b)


def held_out(s: Session, env: JointEnv) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation images the rewards never saw: the reward set is the first ``reward_set``
    images of the same seeded permutation of the validation split, these are the rest."""
    n = len(env.reward_y)
    perm = s.val.subset(len(s.val), seed=s.cfg.seed)
    if len(perm) <= n:
        log.warning("joint: no validation images outside the reward set; choosing on it")
        return env.reward_x, env.reward_y
    dev = env.reward_x.device
    return perm.images[n:].to(dev), perm.labels[n:].to(dev)


def fair_pick(
    s: Session,
    env: JointEnv,
    candidates: list[tuple[str, torch.Tensor]],
    original: dict[str, torch.Tensor],
    known: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first of the named masks ``[N]`` unless a later one beats the incumbent after the
    same recovery (McNemar z > ``joint.rerank_z`` on the held-out images, so a tie keeps the
    incumbent); ``known``: the first one's recovered correctness if measured already. Returns
    the winner (one of the given tensors) and its recovered correctness ``[M]``."""
    images = held_out(s, env)
    name, mask = candidates[0]
    best = known if known is not None else recovered_hits(s, env, mask, original, images)
    for other, challenger in candidates[1:]:
        if torch.equal(challenger, mask):  # the same structure: nothing to recover twice
            log.info("joint: the %s mask is the %s mask", other, name)
            continue
        got = recovered_hits(s, env, challenger, original, images)
        z = mcnemar_z(got, best)
        won = z > s.cfg.joint.rerank_z
        log.info(
            "joint: after %d recovery steps, held-out accuracy %.2f%% %s vs %.2f%% %s "
            "(McNemar z = %.2f, needs > %.2f): keep the %s mask", s.cfg.joint.rerank_steps,
            100 * float(got.double().mean()), other, 100 * float(best.double().mean()), name,
            z, s.cfg.joint.rerank_z, other if won else name,
        )  # fmt: skip
        if won:
            name, mask, best = other, challenger, got
    return mask, best
