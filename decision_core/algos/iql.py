"""IQL: implicit Q-learning on a reward task, for discrete and continuous actions (Kostrikov et al., 2022).

- **value**: V(s) regressed to an upper expectile of the target twin critics' min Q(s, a) over logged actions,
  so the maximum over actions is approximated without querying actions the logs never took;
- **critic**: a twin Q ensemble (one batched network) regressed to ``r + discount * (1 - terminal) * V(s')``;
- **actor**: the policy is the behaviour's, improved by the critic: ``pi(a | s) ∝ pi_b(a | s) * exp(beta * A(s, a))``
  (the maximiser of ``E_pi[A] - KL(pi || pi_b) / beta``). For discrete actions it is computed exactly
  (``extraction="closed_form"``): the actor clones the logged actions and the policy's logits are
  ``log pi_b + beta * Q`` (:func:`~decision_core.algos.nets.tilted_logits`), so a high ``beta`` picks the best
  action the data supports without the variance and the weight cap of a regression. For Box actions (or with
  ``extraction="awr"``) the actor fits it by advantage-weighted regression, the ``exp(beta * (Q - V))``-weighted
  log-likelihood of the logged actions (a tanh-squashed Gaussian).

The three losses touch disjoint parameters (the value target is the frozen target critic, the critic target is a
detached V(s'), the actor's weights are detached), so one backward pass and one Adam step train all three, with the
same result as three separate steps. Goals are ignored (``goal_conditioned = False``).

The reward is resolved once into the dataset's rewards array before training (``config.reward`` names it; see
:func:`decision_core.reward.rewards_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from decision_core.algos.base import AdvantageExtractionAgent, AgentConfig, validate_extraction
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
from decision_core.data.dataset import Batch
from decision_core.reward import check_reward


@dataclass(frozen=True)
class IQLConfig(AgentConfig):
    #: The reward learned: an expression over state/next-state features (``decision_core.reward``), ``"logged"``
    #: for the logs' reward column, or None for the domain's own reward (``spec.reward``). Training records the
    #: task it resolved here (``agent.task`` reads it), so OPE, selection and fine-tuning judge the agent by it.
    reward: str | None = None
    #: Rewards are multiplied by this factor before learning; None = 1 / std of the training data's rewards
    #: (fitted when the agent builds its sampler, then written here and kept with the weights), so ``beta`` / the
    #: conservative weight mean the same whatever the reward's units (inventory costs are ~10 per step, clicks ~0.5).
    reward_scale: float | None = None
    #: Expectile of the value regression (0.5 = mean, -> 1 = max over logged actions).
    expectile: float = 0.7
    #: Inverse temperature of the improved policy ``pi_b * exp(beta * A)`` (higher = greedier); A is in standard
    #: deviations of the reward (see ``reward_scale``). None = 20.0 for the closed form, 3.0 for AWR, whose
    #: weights saturate at ``max_weight`` (exp(3 * 1.5) ~ 100) and whose regression grows noisy as beta grows.
    beta: float | None = None
    #: Discrete actions: "closed_form" (exact ``log pi_b + beta * Q`` logits over the actions) or "awr"
    #: (an advantage-weighted actor, as for Box actions, which always use AWR).
    extraction: str = "closed_form"
    #: Closed form: actions the behaviour takes at ``s`` with less than this fraction of the probability of its
    #: most likely action are never chosen (the critic never saw them there). 0 = keep every action, their
    #: low ``log pi_b`` alone holding the policy near the data (best measured on inventory and dialogue).
    support: float = 0.0
    #: Cap of the AWR advantage weights (keeps a few large advantages from dominating the actor loss).
    max_weight: float = 100.0
    #: Polyak rate of the target critics.
    tau: float = 0.005
    #: Critics in the ensemble; the value regresses to their minimum.
    n_critics: int = 2
    #: LayerNorm in the critic and value networks (stabilises bootstrapped targets).
    layer_norm: bool = True
    #: Discrete actions: the critic's per-action outputs are one head shared by all actions plus a residual per
    #: action, whose squared norm is added to the loss times this weight (0: a plain head per action). Actions the
    #: logs rarely take then keep values near the shared estimate, so the policy does not chase the ones whose few
    #: samples made them look best (recommender, 240 items: +3.8 points over 8 seeds; see docs/algorithms.md).
    action_shrink: float = 0.01

    saved_before: ClassVar[dict[str, Any]] = {"action_shrink": 0.0}  # agents saved before the shared head

    def validate(self) -> None:
        super().validate()
        self.require(0.0 < self.expectile < 1.0, "expectile", "must be in (0, 1)")
        validate_extraction(self, "beta")
        self.require(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        self.require(self.n_critics >= 1, "n_critics", "must be >= 1")
        self.require(self.reward is None or bool(str(self.reward).strip()), "reward", "must not be empty")
        self.require(self.reward_scale is None or self.reward_scale > 0.0, "reward_scale", "must be > 0 (or None)")
        self.require(self.action_shrink >= 0.0, "action_shrink", "must be >= 0")


class IQLAgent(AdvantageExtractionAgent):
    name = "iql"
    goal_conditioned = False
    config_class = IQLConfig
    beta_field = "beta"
    config: IQLConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.reward is not None:  # a bad expression fails here, not after the data is loaded
            check_reward(self.config.reward, self.spec)

    def build_networks(self) -> dict[str, nn.Module]:
        c, s = self.config, self.input_dim
        shared = c.action_shrink > 0.0
        critic = Critic(self.spec, s, c.hidden_dims, n=c.n_critics, layer_norm=c.layer_norm, shared_action_head=shared)
        target = Critic(self.spec, s, c.hidden_dims, n=c.n_critics, layer_norm=c.layer_norm, shared_action_head=shared)
        target.load_state_dict(critic.state_dict())
        return {
            "critic": critic,
            "target_critic": target,
            "value": MLP(s, c.hidden_dims, 1, layer_norm=c.layer_norm),
            "actor": PolicyNet(self.spec, s, c.hidden_dims),
            "reward_scale": RewardScale(c.reward_scale),
        }

    def policy(self, states: Tensor, goals: Tensor | None, goal_masks: Tensor | None) -> PolicyOutput:
        return self.extracted_policy(self.norm_states(states))

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

        # Closed form: the actor is the behaviour prior pi_b (unweighted likelihood); the critic tilts it in policy().
        weights = torch.ones_like(adv) if self.closed_form else awr_weights(adv, self.beta, c.max_weight)
        # The behaviour prior is a distribution over every action (unavailable ones cloned towards 0), so its
        # support threshold compares available actions only; the AWR actor is fitted over the available ones.
        masks = None if self.closed_form else batch.action_masks
        log_prob = self.dist.log_prob(self.nets["actor"](x), batch.actions, masks)
        actor_loss = -(weights * log_prob).mean()

        loss = value_loss + critic_loss + actor_loss
        self.step("all", cast(Critic, self.nets["critic"]).with_penalty(loss, c.action_shrink))
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
