"""GCBC: goal-conditioned behaviour cloning.

The policy imitates the logged action, conditioned on an outcome the logs reached later in the same episode
(hindsight relabelling). Simple, stable, and the baseline every goal-conditioned method must beat.
Discrete actions: categorical over masked logits; continuous: tanh-squashed Gaussian in the Box bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from decision_core.algos.base import Agent, AgentConfig, GoalConditionedConfig
from decision_core.algos.nets import PolicyNet, PolicyOutput
from decision_core.data.dataset import Batch
from decision_core.data.goals import GoalSamplerConfig


@dataclass(frozen=True)
class GCBCConfig(GoalConditionedConfig):
    #: LayerNorm between the actor's hidden layers.
    layer_norm: bool = False
    #: Actor goals: outcomes reached later in the episode, uniform offset (OGBench's GCBC mixture); value goals
    #: are not used by GCBC.
    goals: GoalSamplerConfig = field(
        default_factory=lambda: GoalSamplerConfig(
            actor_p_curgoal=0.0, actor_p_trajgoal=1.0, actor_p_randomgoal=0.0, actor_geom_sample=False
        )
    )


class GCBCAgent(Agent):
    name = "gcbc"
    goal_conditioned = True
    config_class: ClassVar[type[AgentConfig]] = GCBCConfig
    config: GCBCConfig

    def build_networks(self) -> dict[str, nn.Module]:
        return {
            "actor": PolicyNet(self.spec, self.input_dim, self.config.hidden_dims, layer_norm=self.config.layer_norm)
        }

    def policy(self, states: Tensor, goals: Tensor | None, goal_masks: Tensor | None) -> PolicyOutput:
        return self.nets["actor"](self.inputs(states, goals, goal_masks))

    def actor_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative log-likelihood of the logged action given the state and a hindsight goal."""
        out = self.policy(batch.states, batch.actor_goals, batch.actor_goal_masks)
        log_prob = self.dist.log_prob(out, batch.actions, batch.action_masks)
        loss = -log_prob.mean()
        info = {"actor/loss": loss, "actor/log_prob": log_prob.mean()}
        if self.spec.discrete:
            info["actor/accuracy"] = (self.dist.greedy(out, batch.action_masks) == batch.actions).float().mean()
        else:
            info["actor/mse"] = (self.dist.greedy(out) - batch.actions).pow(2).mean()
        return loss, info

    def update(self, batch: Batch) -> dict[str, float]:
        if self.goal_conditioned:
            self.require_goals(batch)
        loss, info = self.actor_loss(batch)
        self.step("all", loss)
        return self.finish_update(info)
