"""Shared network math: tanh-squashed Gaussian densities stay exact and finite where the mean saturates; a critic's
shared action head keeps rarely taken actions near the others."""

from __future__ import annotations

import math

import torch

from decision_core.algos.nets import Critic, PolicyDistribution, PolicyOutput
from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature

SPEC = DomainSpec(
    name="box",
    version="1",
    state=(Feature("x"),),
    outcomes=(OutcomeFeature("x", 0.1),),
    actions=BoxActions(names=("a", "b"), low=(0.0, -2.0), high=(10.0, 2.0)),
)


def textbook(out: PolicyOutput, pre: torch.Tensor, half_range: torch.Tensor) -> torch.Tensor:
    """log N(pre) - sum log(half_range * (1 - tanh(pre)^2)), in float64."""
    mean, log_std, pre = out.mean.double(), out.log_std.double(), pre.double()
    gauss = (-0.5 * ((pre - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return gauss - torch.log(half_range.double() * (1 - torch.tanh(pre) ** 2)).sum(-1)


def test_sampled_density_matches_the_formula_and_stays_finite_when_saturated():
    dist = PolicyDistribution(SPEC)
    half_range = torch.tensor([5.0, 2.0])
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    moderate = PolicyOutput(mean=torch.full((64, 2), 0.7), log_std=torch.full((64, 2), -0.5))
    _, logp = dist.rsample(moderate, noise)
    pre = moderate.mean + moderate.log_std.exp() * noise
    torch.testing.assert_close(logp.double(), textbook(moderate, pre, half_range), rtol=1e-5, atol=1e-4)
    # A mean far past tanh's float32 saturation (1 - tanh(u)^2 == 0): the density must stay finite.
    saturated = PolicyOutput(mean=torch.full((64, 2), 30.0), log_std=torch.full((64, 2), -3.0))
    actions, logp = dist.rsample(saturated, noise)
    assert torch.isfinite(logp).all() and (logp > 0).all()  # mass piled at the bound: a large, finite density
    assert torch.allclose(actions, torch.tensor([10.0, 2.0]).expand(64, 2))


def test_log_prob_of_given_actions_matches_the_sampled_density():
    dist = PolicyDistribution(SPEC)
    out = PolicyOutput(mean=torch.full((16, 2), -0.3), log_std=torch.full((16, 2), -1.0))
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    actions, logp = dist.rsample(out, noise)
    torch.testing.assert_close(dist.log_prob(out, actions), logp, rtol=1e-4, atol=1e-3)


def _fit_critic(shrink: float) -> Critic:
    """A one-step critic of four actions; the last one appears 3 times in 3,000 with reward 2, the others pay 0."""
    spec = DomainSpec(
        name="k",
        version="1",
        state=(Feature("x"),),
        outcomes=(OutcomeFeature("x", 0.1),),
        actions=DiscreteActions(labels=("a", "b", "c", "rare")),
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 1, generator=g)
    actions = torch.randint(0, 3, (3000,), generator=g)
    actions[:3] = 3
    rewards = 2.0 * (actions == 3).float() + 0.1 * torch.randn(3000, generator=g)
    torch.manual_seed(0)
    critic = Critic(spec, 1, (32,), n=1, layer_norm=False, shared_action_head=shrink > 0)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(400):
        loss = (critic(x, actions)[0] - rewards).pow(2).mean()
        opt.zero_grad()
        critic.with_penalty(loss, shrink).backward()
        opt.step()
    return critic


def test_a_shared_action_head_keeps_a_rarely_taken_action_near_the_others():
    plain, shared = _fit_critic(0.0), _fit_critic(0.01)
    assert plain.penalty() is None
    x = torch.zeros(1, 1)
    with torch.no_grad():
        q_plain, q_shared = plain.all_actions(x)[0, 0], shared.all_actions(x)[0, 0]
    # Both fit the common actions; only the plain head believes the rare action's three samples.
    assert q_plain[:3].abs().max() < 0.1 and q_shared[:3].abs().max() < 0.1
    assert q_plain[3] > 1.5
    assert q_shared[3] < 0.5 * q_plain[3]
    # The effective last layer is what a plain layer would hold (what the numpy serving copy reads).
    last = shared.net.net[-1]
    torch.testing.assert_close(last.weight, last.shared_weight + last.residual_weight)
    torch.testing.assert_close(shared.all_actions(x), torch.baddbmm(last.bias, shared.net.net[:-1](x), last.weight))
