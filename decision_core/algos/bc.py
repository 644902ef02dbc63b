"""BC: plain behaviour cloning, the non-goal baseline (imitates the logs; needs no reward and no goal).

Same network and loss as GCBC without the goal input; its policy is what "act like the logs" means.
"""

from __future__ import annotations

from dataclasses import dataclass

from decision_core.algos.base import AgentConfig
from decision_core.algos.gcbc import GCBCAgent


@dataclass(frozen=True)
class BCConfig(AgentConfig):
    #: LayerNorm between the actor's hidden layers.
    layer_norm: bool = False


class BCAgent(GCBCAgent):
    name = "bc"
    goal_conditioned = False
    config_class = BCConfig
    needs_rewards = False
