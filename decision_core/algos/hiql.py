"""HIQL: hierarchical implicit Q-learning over goal representations.

One goal-conditioned value ``V(s, g)`` (twin ensemble, Polyak target, expectile regression as in GCIVL, no
Q-function) reads the goal through a learned representation ``z = phi(s, g)`` (length-normalised). Two policies
share it:

- the **high level** ``pi_h(z | s, g)`` proposes the representation of the outcome reached ``subgoal_steps``
  ahead (never past its goal), weighted by ``exp(temperature * (V(s_k, g) - V(s, g)))``;
- the **low level** ``pi_l(a | s, z)`` reaches that subgoal, weighted by
  ``exp(temperature * (V(s', w) - V(s, w)))`` with ``w`` the outcome ``subgoal_steps`` ahead.

Subgoals live in the outcome space (all outcome features specified), so partial goals only concern the high
level. Acting: ``z`` = the high level's mean, renormalised; the action comes from the low level, which is
categorical (discrete) or a squashed Gaussian (continuous) like every other agent here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from decision_core.algos.base import Agent, GoalConditionedConfig
from decision_core.algos.nets import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    MLP,
    EnsembleMLP,
    PolicyNet,
    PolicyOutput,
    awr_weights,
    expectile_loss,
    gaussian_log_prob,
    normalize_rep,
    polyak_update,
)
from decision_core.data.dataset import Batch
from decision_core.data.goals import GoalSamplerConfig
from decision_core.errors import SpecError


@dataclass(frozen=True)
class HIQLConfig(GoalConditionedConfig):
    #: Width of the goal representation phi(s, g) the value reads and the high level proposes.
    rep_dim: int = 10
    #: Expectile of the value regression.
    expectile: float = 0.7
    #: Inverse temperature of the low-level advantage weights.
    low_temperature: float = 3.0
    #: Inverse temperature of the high-level advantage weights.
    high_temperature: float = 3.0
    #: Cap on the advantage weights.
    max_weight: float = 100.0
    #: Polyak rate of the target value (and its representation).
    tau: float = 0.005
    #: LayerNorm in the value and representation networks.
    layer_norm: bool = True
    #: Value goals: 20% own outcome, 50% later in the episode (geometric), 30% random; actor goals: later in
    #: the episode, uniform; subgoals ``subgoal_steps`` ahead (OGBench's HIQL mixture, shorter subgoal horizon).
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
            subgoal_steps=5,
        )
    )

    def validate(self) -> None:
        super().validate()
        self.require(self.rep_dim >= 1, "rep_dim", "must be >= 1")
        self.require(0.0 < self.expectile < 1.0, "expectile", "must be in (0, 1)")
        self.require(self.low_temperature >= 0.0, "low_temperature", "must be >= 0")
        self.require(self.high_temperature >= 0.0, "high_temperature", "must be >= 0")
        self.require(self.max_weight > 0.0, "max_weight", "must be > 0")
        self.require(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        if self.goals.subgoal_steps < 1:
            raise SpecError(f"HIQLConfig.goals.subgoal_steps must be >= 1 (got {self.goals.subgoal_steps})")


class _ValueWithRep(nn.Module):
    """V(s, g) = ensemble MLP over [normalised s, phi(s, g)], phi a normalised MLP over [s, goal encoding]."""

    def __init__(self, state_dim: int, goal_dim: int, config: HIQLConfig) -> None:
        super().__init__()
        self.rep = MLP(state_dim + goal_dim, config.hidden_dims, config.rep_dim, layer_norm=config.layer_norm)
        self.value = EnsembleMLP(2, state_dim + config.rep_dim, config.hidden_dims, 1, layer_norm=config.layer_norm)

    def goal_rep(self, s: Tensor, goal_enc: Tensor) -> Tensor:
        return normalize_rep(self.rep(torch.cat([s, goal_enc], dim=-1)))

    def forward(self, s: Tensor, goal_enc: Tensor) -> Tensor:
        """(2, B) values of normalised states ``s`` for encoded goals."""
        return self.value(torch.cat([s, self.goal_rep(s, goal_enc)], dim=-1)).squeeze(-1)


class HIQLAgent(Agent):
    name = "hiql"
    goal_conditioned = True
    config_class = HIQLConfig
    config: HIQLConfig

    @property
    def _value_net(self) -> _ValueWithRep:
        return cast(_ValueWithRep, self.nets["value"])

    def build_networks(self) -> dict[str, nn.Module]:
        c = self.config
        s, g = self.spec.state_dim, 2 * self.n_outcomes
        value = _ValueWithRep(s, g, c)
        return {
            "value": value,
            "target_value": copy.deepcopy(value),
            "low_actor": PolicyNet(self.spec, s + c.rep_dim, c.hidden_dims),
            "high_actor": MLP(s + g, c.hidden_dims, 2 * c.rep_dim),
        }

    # -- pieces -----------------------------------------------------------------------------------------------
    def _full(self, goals: Tensor) -> Tensor:
        return torch.ones_like(goals, dtype=torch.bool)

    def values(self, net: str, states: Tensor, goals: Tensor, masks: Tensor) -> Tensor:
        return self.nets[net](self.norm_states(states), self.encode_goals(goals, masks))

    def high(self, states: Tensor, goals: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        out = self.nets["high_actor"](torch.cat([self.norm_states(states), self.encode_goals(goals, masks)], -1))
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def low(self, states: Tensor, rep: Tensor) -> PolicyOutput:
        return self.nets["low_actor"](torch.cat([self.norm_states(states), rep], dim=-1))

    def policy(self, states: Tensor, goals: Tensor | None, goal_masks: Tensor | None) -> PolicyOutput:
        if goals is None or goal_masks is None:
            goals = torch.zeros(states.shape[0], self.n_outcomes, device=states.device)
            goal_masks = torch.zeros(states.shape[0], self.n_outcomes, dtype=torch.bool, device=states.device)
        mean, _ = self.high(states, goals, goal_masks)
        return self.low(states, normalize_rep(mean))

    # -- losses -----------------------------------------------------------------------------------------------
    def value_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        assert batch.value_goals is not None and batch.value_goal_masks is not None
        assert batch.value_rewards is not None and batch.value_masks is not None
        g, m = batch.value_goals, batch.value_goal_masks
        with torch.no_grad():
            next_v = self.values("target_value", batch.next_states, g, m)  # (2, B)
            v_target = self.values("target_value", batch.states, g, m).mean(0)
            bootstrap = self.config.discount * batch.value_masks
            adv = batch.value_rewards + bootstrap * next_v.min(0).values - v_target
            q = batch.value_rewards + bootstrap * next_v
        v = self.values("value", batch.states, g, m)
        loss = expectile_loss(adv, q - v, self.config.expectile).mean(-1).sum()
        return loss, {"value/loss": loss, "value/v_mean": v.mean(), "value/adv_mean": adv.mean()}

    def low_actor_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        assert batch.low_goals is not None
        sub, full = batch.low_goals, self._full(batch.low_goals)
        with torch.no_grad():
            adv = self.values("value", batch.next_states, sub, full).mean(0) - self.values(
                "value", batch.states, sub, full
            ).mean(0)
            rep = self._value_net.goal_rep(self.norm_states(batch.states), self.encode_goals(sub, full))
        weights = awr_weights(adv, self.config.low_temperature, self.config.max_weight)
        log_prob = self.dist.log_prob(self.low(batch.states, rep), batch.actions, batch.action_masks)
        loss = -(weights * log_prob).mean()
        return loss, {"low_actor/loss": loss, "low_actor/log_prob": log_prob.mean(), "low_actor/adv": adv.mean()}

    def high_actor_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        assert batch.actor_goals is not None and batch.actor_goal_masks is not None
        assert batch.high_targets is not None and batch.high_target_states is not None
        g, m = batch.actor_goals, batch.actor_goal_masks
        with torch.no_grad():
            adv = self.values("value", batch.high_target_states, g, m).mean(0) - self.values(
                "value", batch.states, g, m
            ).mean(0)
            target = self._value_net.goal_rep(
                self.norm_states(batch.states), self.encode_goals(batch.high_targets, self._full(batch.high_targets))
            )
        weights = awr_weights(adv, self.config.high_temperature, self.config.max_weight)
        mean, log_std = self.high(batch.states, g, m)
        log_prob = gaussian_log_prob(mean, log_std, target)
        loss = -(weights * log_prob).mean()
        return loss, {
            "high_actor/loss": loss,
            "high_actor/log_prob": log_prob.mean(),
            "high_actor/adv": adv.mean(),
            "high_actor/mse": (mean - target).pow(2).mean(),
        }

    def update(self, batch: Batch) -> dict[str, float]:
        self.require_goals(batch)
        if batch.low_goals is None:
            raise ValueError("HIQL needs subgoal fields: sample batches with agent.sampler(dataset)")
        value_loss, value_info = self.value_loss(batch)
        low_loss, low_info = self.low_actor_loss(batch)
        high_loss, high_info = self.high_actor_loss(batch)
        # Advantages and representation targets are computed without gradient, so the three losses touch
        # disjoint parameters and one optimiser step on their sum equals three separate steps.
        self.step("all", value_loss + low_loss + high_loss)
        polyak_update(self.nets["target_value"], self.nets["value"], self.config.tau)
        return self.finish_update({**value_info, **low_info, **high_info})
