"""GCIQL: goal-conditioned implicit Q-learning with advantage-weighted policy extraction.

Critic ``Q(s, a, g)`` (twin ensemble, Polyak target) regresses ``r + discount * mask * V(s', g)``; the value
``V(s, g)`` is an expectile of the target critic's ``min Q``, so it estimates the best in-distribution action
without querying unseen actions. The policy is the behaviour's, improved by the critic:
``pi(a | s, g) ∝ pi_b(a | s, g) * exp(temperature * A(s, a, g))``. For discrete actions it is computed exactly
(``extraction="closed_form"``): the actor clones the logged actions for the actor goals and the policy's logits are
``log pi_b + temperature * Q`` (:func:`~decision_core.algos.nets.tilted_logits`). For Box actions (or with
``extraction="awr"``) the actor maximises ``exp(temperature * (Q - V)) * log pi(a | s, g)`` on the logged actions
(AWR). Rewards are ``success - 1`` with success decided by the domain's outcome tolerances (see
``decision_core.data.goals``), so advantages count steps to the goal.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from decision_core.algos.base import AdvantageExtractionAgent, GoalConditionedConfig, validate_extraction
from decision_core.algos.nets import (
    MLP,
    Critic,
    PolicyNet,
    PolicyOutput,
    awr_weights,
    expectile_loss,
    polyak_update,
)
from decision_core.data.dataset import Batch
from decision_core.data.goals import GoalSamplerConfig


@dataclass(frozen=True)
class GCIQLConfig(GoalConditionedConfig):
    #: Expectile of the value regression (0.5 = mean, towards 1 = max over in-distribution actions).
    expectile: float = 0.9
    #: Inverse temperature of the improved policy ``pi_b * exp(temperature * A)``, A in steps to the goal.
    #: None = 20.0 for the closed form, 3.0 for AWR (whose weights saturate at ``max_weight``).
    awr_temperature: float | None = None
    #: Discrete actions: "closed_form" (exact ``log pi_b + temperature * Q`` logits over the actions) or "awr"
    #: (an advantage-weighted actor, as for Box actions, which always use AWR).
    extraction: str = "closed_form"
    #: Closed form: actions the behaviour takes at ``s`` with less than this fraction of the probability of its
    #: most likely action are never chosen (the critic never saw them there; 0 = keep every action). Goal
    #: critics extrapolate to actions never taken in a state (a dialogue's ``bye`` at the first turn) far more
    #: than ``log pi_b`` can offset at temperature 20.
    support: float = 0.1
    #: Cap on the advantage weights (keeps the actor loss bounded).
    max_weight: float = 100.0
    #: Polyak rate of the target critic.
    tau: float = 0.005
    #: LayerNorm in the critic and value networks (stabilises bootstrapping).
    layer_norm: bool = True
    #: Critic ensemble size (2 = twin critics, min taken for the value target).
    n_critics: int = 2
    #: Discrete actions: weight of the penalty that keeps each action's critic head near one shared by all actions
    #: (0: a plain head per action); see ``IQLConfig.action_shrink``. Goal success, 3 seeds, 30 CPU-s: recommender
    #: 26.2% -> 34.6%, inventory 58.4% -> 70.2%, dialogue 71.2% -> 69.2%.
    action_shrink: float = 0.01
    #: Value goals: 20% the transition's own outcome, 50% later in the episode (geometric), 30% random;
    #: actor goals: later in the episode, uniform (OGBench's GCIQL mixture). An episode that ends without the
    #: goal counts as never reaching it: the closed-form policy follows the critic closely, and would otherwise
    #: end episodes early (a dialogue's ``bye`` looks one step from every goal).
    goals: GoalSamplerConfig = field(
        default_factory=lambda: GoalSamplerConfig(
            value_p_curgoal=0.2,
            value_p_trajgoal=0.5,
            value_p_randomgoal=0.3,
            value_geom_sample=True,
            actor_p_curgoal=0.0,
            actor_p_trajgoal=1.0,
            actor_p_randomgoal=0.0,
            actor_geom_sample=False,
            terminal_failure=True,
        )
    )

    saved_before: ClassVar[dict[str, Any]] = {"action_shrink": 0.0}  # agents saved before the shared head

    def validate(self) -> None:
        super().validate()
        self.require(0.0 < self.expectile < 1.0, "expectile", "must be in (0, 1)")
        validate_extraction(self, "awr_temperature")
        self.require(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        self.require(self.n_critics >= 1, "n_critics", "must be >= 1")
        self.require(self.action_shrink >= 0.0, "action_shrink", "must be >= 0")


class GCIQLAgent(AdvantageExtractionAgent):
    name = "gciql"
    goal_conditioned = True
    config_class = GCIQLConfig
    beta_field = "awr_temperature"
    config: GCIQLConfig

    def build_networks(self) -> dict[str, nn.Module]:
        c = self.config
        critic = Critic(
            self.spec,
            self.input_dim,
            c.hidden_dims,
            n=c.n_critics,
            layer_norm=c.layer_norm,
            shared_action_head=c.action_shrink > 0.0,
        )
        return {
            "critic": critic,
            "target_critic": copy.deepcopy(critic),
            "value": MLP(self.input_dim, c.hidden_dims, 1, layer_norm=c.layer_norm),
            "actor": PolicyNet(self.spec, self.input_dim, c.hidden_dims),
        }

    def policy(self, states: Tensor, goals: Tensor | None, goal_masks: Tensor | None) -> PolicyOutput:
        return self.extracted_policy(self.inputs(states, goals, goal_masks))

    def value_loss(self, x: Tensor, actions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        q = self.nets["target_critic"](x, actions).min(0).values
        v = self.nets["value"](x).squeeze(-1)
        adv = q - v
        loss = expectile_loss(adv, adv, self.config.expectile).mean()
        return loss, {"value/loss": loss, "value/v_mean": v.mean(), "value/adv_mean": adv.mean()}

    def critic_loss(self, batch: Batch, x: Tensor, next_x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        assert batch.value_rewards is not None and batch.value_masks is not None
        with torch.no_grad():
            next_v = self.nets["value"](next_x).squeeze(-1)
        target = batch.value_rewards + self.config.discount * batch.value_masks * next_v
        q = self.nets["critic"](x, batch.actions)
        loss = (q - target).pow(2).mean(-1).sum()
        total = cast(Critic, self.nets["critic"]).with_penalty(loss, self.config.action_shrink)
        return total, {"critic/loss": loss, "critic/q_mean": q.mean(), "critic/q_max": q.max()}

    def actor_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.inputs(batch.states, batch.actor_goals, batch.actor_goal_masks)
        if self.closed_form:  # the actor is the behaviour prior pi_b; the critic tilts it in policy()
            weights = torch.ones(x.shape[0], device=x.device)
        else:
            with torch.no_grad():
                q = self.nets["target_critic"](x, batch.actions).min(0).values
                v = self.nets["value"](x).squeeze(-1)
            weights = awr_weights(q - v, self.beta, self.config.max_weight)
        # The behaviour prior is a distribution over every action (unavailable ones cloned towards 0), so its
        # support threshold compares available actions only; the AWR actor is fitted over the available ones.
        masks = None if self.closed_form else batch.action_masks
        log_prob = self.dist.log_prob(self.nets["actor"](x), batch.actions, masks)
        loss = -(weights * log_prob).mean()
        return loss, {"actor/loss": loss, "actor/log_prob": log_prob.mean(), "actor/adv_weight": weights.mean()}

    def update(self, batch: Batch) -> dict[str, float]:
        self.require_goals(batch)
        x = self.inputs(batch.states, batch.value_goals, batch.value_goal_masks)
        next_x = self.inputs(batch.next_states, batch.value_goals, batch.value_goal_masks)
        value_loss, value_info = self.value_loss(x, batch.actions)
        critic_loss, critic_info = self.critic_loss(batch, x, next_x)
        actor_loss, actor_info = self.actor_loss(batch)
        # The three losses touch disjoint parameters (targets are detached), so one step on their sum is three
        # separate steps in one optimiser call.
        self.step("all", value_loss + critic_loss + actor_loss)
        polyak_update(self.nets["target_critic"], self.nets["critic"], self.config.tau)
        return self.finish_update({**value_info, **critic_info, **actor_info})
