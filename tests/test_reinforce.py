"""REINFORCE: loss and gradient on a 3-filter toy match hand-computed values."""

import math

import pytest
import torch

from rlprune.agent import Agent, advantages, bernoulli_entropy, reinforce_loss, sample_masks
from rlprune.agent.reinforce import ReinforceTerms
from rlprune.config import AgentConfig


def test_advantages_batch_mean_and_normalisation() -> None:
    adv = advantages(torch.tensor([1.0, 0.0]), None, normalize=True)
    assert torch.allclose(adv, torch.tensor([1.0, -1.0]))
    raw = advantages(torch.tensor([3.0, 1.0, 2.0]), baseline=1.0, normalize=False)
    assert torch.allclose(raw, torch.tensor([2.0, 0.0, 1.0]))


def test_entropy_known_values() -> None:
    h = bernoulli_entropy(torch.tensor([0.0, math.log(3)]))
    h75 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert torch.allclose(h, torch.tensor([math.log(2), h75]), atol=1e-6)


def test_reinforce_loss_and_gradient_by_hand() -> None:
    # p = sigmoid(logits) = [0.5, 0.75, 0.25]
    logits = torch.tensor([0.0, math.log(3), -math.log(3)], requires_grad=True)
    actions = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    adv = advantages(torch.tensor([1.0, 0.0]))  # -> [1, -1]
    beta = 0.1
    loss = reinforce_loss(logits, actions, adv).total(beta)
    # log pi(a1) = ln .5 + ln .75 + ln .75 ; log pi(a2) = ln .5 + ln .75 + ln .25
    lp1 = math.log(0.5) + 2 * math.log(0.75)
    lp2 = math.log(0.5) + math.log(0.75) + math.log(0.25)
    h = (math.log(2) + 2 * (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))) / 3
    expected = -0.5 * (1 * lp1 - 1 * lp2) - beta * h
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # d/dl_i = -1/K sum_k A_k (a_ki - p_i) + beta/N * l_i p_i (1 - p_i)
    pg = [-0.5, 0.0, 0.5]
    ent = [0.0, beta / 3 * math.log(3) * 0.1875, -beta / 3 * math.log(3) * 0.1875]
    assert torch.allclose(
        logits.grad, torch.tensor([a + b for a, b in zip(pg, ent, strict=True)]), atol=1e-6
    )


def test_reinforce_terms_are_the_pure_pg_term_and_the_mean_entropy() -> None:
    # p = [0.5, 0.75]; masks [1, 0] and [1, 1]; advantages [1, -1]
    logits = torch.tensor([0.0, math.log(3)])
    actions = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    adv = torch.tensor([1.0, -1.0])
    terms = reinforce_loss(logits, actions, adv)
    assert isinstance(terms, ReinforceTerms)
    lp1, lp2 = math.log(0.5) + math.log(0.25), math.log(0.5) + math.log(0.75)
    assert terms.pg.item() == pytest.approx(-(1 * lp1 - 1 * lp2) / 2, abs=1e-6)  # = ln 3 / 2
    h75 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert terms.entropy.item() == pytest.approx((math.log(2) + h75) / 2, abs=1e-6)
    assert terms.total(0.5).item() == pytest.approx(terms.pg.item() - 0.5 * terms.entropy.item())


def test_agent_logs_the_pure_pg_term() -> None:
    """``PolicyStats.pg_loss`` is ``-(adv * log pi).mean()`` of the update, no entropy bonus."""
    torch.manual_seed(0)
    state = torch.randn(3, 4)
    masks = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = torch.tensor([2.0, -1.0, 0.5])
    agent = Agent(4, AgentConfig(samples=3, entropy_coef=0.5), seed=0)
    with torch.no_grad():
        p = torch.sigmoid(agent.policy(state)).double()
    logp = (masks * p.log() + (1 - masks) * (1 - p).log()).sum(dim=1)
    adv = advantages(rewards)  # batch-mean baseline, normalised (the config's defaults)
    stats = agent.update(state, masks, rewards)
    assert stats.pg_loss == pytest.approx(float(-(adv.double() * logp).mean()), abs=1e-5)
    with torch.no_grad():
        after = bernoulli_entropy(agent.policy(state)).mean()
    assert stats.entropy == pytest.approx(float(after), abs=1e-6)


def test_sample_masks_reproducible_and_follow_probs() -> None:
    p = torch.tensor([0.0, 1.0, 0.5])
    a = sample_masks(p, 4000, torch.Generator().manual_seed(1))
    b = sample_masks(p, 4000, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a[:, 0].sum() == 0 and a[:, 1].sum() == 4000
    assert abs(a[:, 2].mean().item() - 0.5) < 0.03


def test_agent_learns_a_fixed_target_mask() -> None:
    """With reward = -Hamming distance to a target mask, the policy converges to it."""
    torch.manual_seed(0)
    state = torch.randn(6, 5)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    agent = Agent(5, AgentConfig(samples=16, lr=0.05, entropy_coef=0.0), seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        masks = agent.sample(state, gen)
        rewards = -(masks - target).abs().sum(dim=1)
        agent.update(state, masks, rewards)
    assert torch.equal((agent.probs(state) > 0.5).float(), target)


def test_agent_state_dict_round_trip() -> None:
    state = torch.randn(4, 3)
    a = Agent(3, AgentConfig(), seed=0)
    a.update(state, torch.ones(8, 4), torch.arange(8.0))
    b = Agent(3, AgentConfig(), seed=1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.probs(state), b.probs(state))
