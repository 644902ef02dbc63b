"""BC: plain behaviour cloning, the non-goal baseline (imitates the logs; needs no reward and no goal).

Same network and loss as GCBC without the goal input; its policy is what "act like the logs" means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from decision_core.algos.base import AgentConfig
from decision_core.algos.gcbc import GCBCAgent
from decision_core.reward import check_reward


@dataclass(frozen=True)
class BCConfig(AgentConfig):
    #: LayerNorm between the actor's hidden layers.
    layer_norm: bool = False
    #: The reward task the policy is judged by (OPE, selection, simulator returns): an expression over the
    #: features, ``"logged"``, or None for the domain's own reward. BC learns no reward; training records the
    #: run's task here, as it does IQL's and CQL's.
    reward: str | None = None

    def validate(self) -> None:
        super().validate()
        self.require(self.reward is None or bool(str(self.reward).strip()), "reward", "must not be empty")


class BCAgent(GCBCAgent):
    name = "bc"
    goal_conditioned = False
    config_class = BCConfig
    needs_rewards = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.task is not None:  # a bad expression fails here, not at the first evaluation
            check_reward(self.task, self.spec)
