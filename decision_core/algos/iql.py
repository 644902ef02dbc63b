"""IQL: implicit Q-learning on a reward task, for discrete and continuous actions (Kostrikov et al., 2022).

- **value**: V(s) regressed to an upper expectile of the target twin critics' min Q(s, a) over logged actions,
  so the maximum over actions is approximated without querying actions the logs never took;
- **critic**: a twin Q ensemble (one batched network) regressed to ``r + discount * (1 - terminal) * V(s')``;
- **actor**: advantage-weighted regression, ``exp(beta * (Q - V))``-weighted log-likelihood of the logged
  actions (a categorical over masked logits for discrete actions, a tanh-squashed Gaussian for Box actions).

The three losses touch disjoint parameters (the value target is the frozen target critic, the critic target is a
detached V(s'), the actor's weights are detached), so one backward pass and one Adam step train all three, with the
same result as three separate steps. Goals are ignored (``goal_conditioned = False``).

The reward is resolved once into the dataset's rewards array before training (``config.reward`` names it; see
:func:`decision_core.reward.rewards_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from decision_core.algos.base import Agent, AgentConfig
from decision_core.algos.nets import (
    MLP,
    Critic,
    PolicyNet,
    PolicyOutput,
    RewardScale,
    awr_weights,
    expectile_loss,
    polyak_update,
)
from decision_core.data.dataset import Batch, OfflineDataset, TransitionSampler
from decision_core.data.goals import GoalSampler
from decision_core.reward import check_reward


@dataclass(frozen=True)
class IQLConfig(AgentConfig):
    #: The reward learned: an expression over state/next-state features (``decision_core.reward``), ``"logged"``
    #: for the logs' reward column, or None for the domain's own reward (``spec.reward``).
    reward: str | None = None
    #: Rewards are multiplied by this factor before learning; None = 1 / std of the training data's rewards
    #: (set when the agent builds its sampler, kept with the weights), so ``beta`` / the conservative weight
    #: mean the same whatever the reward's units (inventory costs are ~10 per step, clicks ~0.5).
    reward_scale: float | None = None
    #: Expectile of the value regression (0.5 = mean, -> 1 = max over logged actions).
    expectile: float = 0.7
    #: Inverse temperature of the advantage weights ``exp(beta * A)`` (higher = greedier actor).
    beta: float = 3.0
    #: Cap of the advantage weights (keeps a few large advantages from dominating the actor loss).
    max_weight: float = 100.0
    #: Polyak rate of the target critics.
    tau: float = 0.005
    #: Critics in the ensemble; the value regresses to their minimum.
    n_critics: int = 2
    #: LayerNorm in the critic and value networks (stabilises bootstrapped targets).
    layer_norm: bool = True

    def validate(self) -> None:
        super().validate()
        self.require(0.0 < self.expectile < 1.0, "expectile", "must be in (0, 1)")
        self.require(self.beta >= 0.0, "beta", "must be >= 0")
        self.require(self.max_weight > 0.0, "max_weight", "must be > 0")
        self.require(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        self.require(self.n_critics >= 1, "n_critics", "must be >= 1")
        self.require(self.reward is None or bool(str(self.reward).strip()), "reward", "must not be empty")
        self.require(self.reward_scale is None or self.reward_scale > 0.0, "reward_scale", "must be > 0 (or None)")


class IQLAgent(Agent):
    name = "iql"
    goal_conditioned = False
    config_class = IQLConfig
    config: IQLConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.reward is not None:  # a bad expression fails here, not after the data is loaded
            check_reward(self.config.reward, self.spec)

    def build_networks(self) -> dict[str, nn.Module]:
        c, s = self.config, self.input_dim
        critic = Critic(self.spec, s, c.hidden_dims, n=c.n_critics, layer_norm=c.layer_norm)
        target = Critic(self.spec, s, c.hidden_dims, n=c.n_critics, layer_norm=c.layer_norm)
        target.load_state_dict(critic.state_dict())
        return {
            "critic": critic,
            "target_critic": target,
            "value": MLP(s, c.hidden_dims, 1, layer_norm=c.layer_norm),
            "actor": PolicyNet(self.spec, s, c.hidden_dims),
            "reward_scale": RewardScale(c.reward_scale),
        }

    def sampler(self, dataset: OfflineDataset, *, seed: int = 0) -> GoalSampler | TransitionSampler:
        sampler = super().sampler(dataset, seed=seed)
        if not self.nets["reward_scale"].is_set:
            self.nets["reward_scale"].fit(dataset.rewards)
        return sampler

    def policy(self, states: Tensor, goals: Tensor | None, goal_masks: Tensor | None) -> PolicyOutput:
        return self.nets["actor"](self.norm_states(states))

    def update(self, batch: Batch) -> dict[str, float]:
        c = self.config
        x = self.norm_states(batch.states)
        x_next = self.norm_states(batch.next_states)
        with torch.no_grad():
            q_target = self.nets["target_critic"](x, batch.actions).min(0).values
            rewards = self.nets["reward_scale"](batch.rewards)
            td_target = rewards + c.discount * (1.0 - batch.terminals) * self.nets["value"](x_next).squeeze(-1)

        v = self.nets["value"](x).squeeze(-1)
        adv = q_target - v
        value_loss = expectile_loss(adv, adv, c.expectile).mean()

        q = self.nets["critic"](x, batch.actions)  # (n_critics, B)
        critic_loss = (q - td_target).pow(2).mean(1).sum()

        weights = awr_weights(adv, c.beta, c.max_weight)
        log_prob = self.dist.log_prob(self.nets["actor"](x), batch.actions, batch.action_masks)
        actor_loss = -(weights * log_prob).mean()

        self.step("all", value_loss + critic_loss + actor_loss)
        polyak_update(self.nets["target_critic"], self.nets["critic"], c.tau)
        return self.finish_update(
            {
                "critic/loss": critic_loss,
                "critic/q_mean": q.mean(),
                "value/loss": value_loss,
                "value/v_mean": v.mean(),
                "actor/loss": actor_loss,
                "actor/adv_mean": adv.mean(),
                "actor/weight_mean": weights.mean(),
                "actor/log_prob": log_prob.mean(),
            }
        )
