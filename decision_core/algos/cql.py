"""CQL: conservative Q-learning on a reward task, for discrete and continuous actions (Kumar et al., 2020).

The critic (a twin Q ensemble, one batched network) minimises the TD error plus
``conservative_weight * (logsumexp_a Q(s, a) - Q(s, a_logged))``, which pushes down the values of actions the logs
did not take and keeps the learned policy close to what the data supports.

- **Discrete**: the logsumexp is exact over the available actions; the TD target is
  ``r + discount * (1 - terminal) * max_a' min_i Q_target_i(s', a')`` over the actions available at ``s'``.
  With ``extraction="closed_form"`` (the default) an actor clones the logged actions and the policy is, as for
  IQL, the behaviour tilted by the critics: logits ``log pi_b + beta * mean_i Q_i``, optionally restricted to the
  actions the behaviour takes at ``s`` with at least ``support`` x its most likely action's probability, as in
  discrete BCQ (:class:`~decision_core.algos.base.AdvantageExtractionAgent`). The prior keeps the policy on the
  data, so the conservative term only has to keep the critic's targets from running away, and its weight is small
  (0.01): at the critic's fixed point each step lowers ``Q(s, a)`` by about
  ``weight * (softmax_Q(a | s) / pi_b(a | s) - 1) / 2`` reward units (standard deviations, see ``reward_scale``),
  accumulated over the horizon, which at weight 1 outweighs the small per-step differences between actions
  (inventory: order sizes) and leaves the policy at the behaviour's most likely action. With ``extraction="q"``
  the policy is the softmax of the critics' mean Q-values (greedy: their argmax), which needs the full weight
  (1.0) to stay off actions the logs never took. ``log_prob`` and propensities are those of the policy served.
- **Continuous** (CQL(H) as in the paper and d3rlpy): the logsumexp is estimated by importance sampling over
  ``n_action_samples`` uniform actions and as many policy actions at ``s`` and at ``s'``; a SAC actor (tanh-squashed
  Gaussian, entropy temperature tuned to a target entropy) maximises the critics' minimum Q.

Goals are ignored (``goal_conditioned = False``). The reward is resolved once into the dataset's rewards array
before training (``config.reward`` names it; see :func:`decision_core.reward.rewards_for`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from decision_core.algos.base import AdvantageExtractionAgent, AgentConfig
from decision_core.algos.nets import (
    MASKED_LOGIT,
    Critic,
    PolicyNet,
    PolicyOutput,
    RewardScale,
    masked_logits,
    polyak_update,
)
from decision_core.data.dataset import Batch
from decision_core.reward import check_reward

#: Discrete policies: the behaviour tilted by the critics ("closed_form") or the critics' Boltzmann policy ("q").
CQL_EXTRACTIONS = ("closed_form", "q")


@dataclass(frozen=True)
class CQLConfig(AgentConfig):
    #: The reward learned: an expression over state/next-state features (``decision_core.reward``), ``"logged"``
    #: for the logs' reward column, or None for the domain's own reward (``spec.reward``). Training records the
    #: task it resolved here (``agent.task`` reads it), so OPE, selection and fine-tuning judge the agent by it.
    reward: str | None = None
    #: Rewards are multiplied by this factor before learning; None = 1 / std of the training data's rewards
    #: (fitted when the agent builds its sampler, then written here and kept with the weights), so the
    #: conservative weight and ``beta`` mean the same whatever the reward's units: the conservative term's pull is
    #: bounded, the TD error's grows with the reward's scale.
    reward_scale: float | None = None
    #: Weight of the conservative term; None = 0.01 for discrete actions with the closed form (the behaviour prior
    #: keeps the policy on the data), 1.0 for discrete ones with "q", 5.0 for continuous ones (d3rlpy's).
    conservative_weight: float | None = None
    #: Discrete actions: "closed_form" (a behaviour-cloned actor tilted by the critics, ``log pi_b + beta * Q``,
    #: restricted to ``support``) or "q" (the softmax of the critics' Q-values over every available action).
    extraction: str = "closed_form"
    #: Closed form: inverse temperature of ``pi_b * exp(beta * Q)``; Q is in standard deviations of the reward.
    beta: float = 20.0
    #: Closed form: actions the behaviour takes at ``s`` with less than this fraction of the probability of its
    #: most likely action are never chosen.
    support: float = 0.0
    #: Polyak rate of the target critics.
    tau: float = 0.005
    #: Critics in the ensemble; targets use their minimum.
    n_critics: int = 2
    #: LayerNorm in the critic networks.
    layer_norm: bool = True
    #: Discrete actions: weight of the penalty that keeps each action's critic head near one shared by all actions
    #: (0: a plain head per action); see ``IQLConfig.action_shrink``.
    action_shrink: float = 0.01
    #: Continuous: sampled actions per source (uniform, policy at s, policy at s') in the logsumexp estimate.
    n_action_samples: int = 10
    #: Continuous: Adam learning rate of the actor.
    actor_lr: float = 1e-4
    #: Continuous: Adam learning rate of the entropy temperature.
    temperature_lr: float = 1e-4
    #: Continuous: initial entropy temperature of the SAC actor.
    initial_temperature: float = 1.0
    #: Continuous: entropy the temperature is tuned towards; None = -(action dimensions).
    target_entropy: float | None = None

    saved_before: ClassVar[dict[str, Any]] = {"action_shrink": 0.0}  # agents saved before the shared head

    def validate(self) -> None:
        super().validate()
        self.require(
            self.conservative_weight is None or self.conservative_weight >= 0.0,
            "conservative_weight",
            "must be >= 0 (or None for the action space's default)",
        )
        self.require(self.extraction in CQL_EXTRACTIONS, "extraction", f"must be one of {CQL_EXTRACTIONS}")
        self.require(self.beta >= 0.0, "beta", "must be >= 0")
        self.require(0.0 <= self.support < 1.0, "support", "must be in [0, 1)")
        self.require(self.reward_scale is None or self.reward_scale > 0.0, "reward_scale", "must be > 0 (or None)")
        self.require(0.0 < self.tau <= 1.0, "tau", "must be in (0, 1]")
        self.require(self.n_critics >= 1, "n_critics", "must be >= 1")
        self.require(self.n_action_samples >= 1, "n_action_samples", "must be >= 1")
        self.require(self.actor_lr > 0.0, "actor_lr", "must be > 0")
        self.require(self.temperature_lr > 0.0, "temperature_lr", "must be > 0")
        self.require(self.initial_temperature > 0.0, "initial_temperature", "must be > 0")
        self.require(self.reward is None or bool(str(self.reward).strip()), "reward", "must not be empty")
        self.require(self.action_shrink >= 0.0, "action_shrink", "must be >= 0")


class LogTemperature(nn.Module):
    """The SAC entropy temperature, stored as its logarithm so it stays positive."""

    def __init__(self, initial: float) -> None:
        super().__init__()
        self.log_value = nn.Parameter(torch.tensor(math.log(initial), dtype=torch.float32))

    def forward(self) -> Tensor:
        return self.log_value.exp()


class CQLAgent(AdvantageExtractionAgent):
    name = "cql"
    goal_conditioned = False
    config_class = CQLConfig
    beta_field = "beta"
    config: CQLConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.reward is not None:  # a bad expression fails here, not after the data is loaded
            check_reward(self.config.reward, self.spec)

    def critic(self, target: bool = False) -> Critic:
        return cast(Critic, self.nets["target_critic" if target else "critic"])

    @property
    def conservative_weight(self) -> float:
        w = self.config.conservative_weight
        if w is not None:
            return w
        if self.spec.discrete:
            return 0.01 if self.closed_form else 1.0
        return 5.0

    @property
    def target_entropy(self) -> float:
        t = self.config.target_entropy
        return t if t is not None else -float(self.spec.action_dim)

    def build_networks(self) -> dict[str, nn.Module]:
        c, s = self.config, self.input_dim
        shared = c.action_shrink > 0.0
        critic = Critic(self.spec, s, c.hidden_dims, n=c.n_critics, layer_norm=c.layer_norm, shared_action_head=shared)
        target = Critic(self.spec, s, c.hidden_dims, n=c.n_critics, layer_norm=c.layer_norm, shared_action_head=shared)
        target.load_state_dict(critic.state_dict())
        nets: dict[str, nn.Module] = {
            "critic": critic,
            "target_critic": target,
            "reward_scale": RewardScale(c.reward_scale),
        }
        if not self.spec.discrete:
            nets["actor"] = PolicyNet(self.spec, s, c.hidden_dims)
            nets["temperature"] = LogTemperature(c.initial_temperature)
        elif self.closed_form:
            nets["actor"] = PolicyNet(self.spec, s, c.hidden_dims)  # the behaviour prior pi_b
        return nets

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self.spec.discrete:
            # The behaviour-cloning loss and the critic's touch disjoint parameters: one step trains both.
            return {"critic": self.adam(*[self.nets[k] for k in ("critic", "actor") if k in self.nets])}
        critic = self.adam(self.nets["critic"])
        c = self.config
        return {
            "critic": critic,
            "actor": torch.optim.Adam(self.nets["actor"].parameters(), lr=c.actor_lr, foreach=True),
            "temperature": torch.optim.Adam(self.nets["temperature"].parameters(), lr=c.temperature_lr),
        }

    def policy(self, states: Tensor, goals: Tensor | None, goal_masks: Tensor | None) -> PolicyOutput:
        x = self.norm_states(states)
        if self.spec.discrete and not self.closed_form:
            return PolicyOutput(logits=self.critic().all_actions(x).mean(0))
        return self.extracted_policy(x)  # the tilted behaviour prior, or the SAC actor for Box actions

    def update(self, batch: Batch) -> dict[str, float]:
        if self.spec.discrete:
            return self._update_discrete(batch)
        return self._update_continuous(batch)

    # -- discrete ---------------------------------------------------------------------------------------------
    def _update_discrete(self, batch: Batch) -> dict[str, float]:
        c = self.config
        x = self.norm_states(batch.states)
        with torch.no_grad():
            x_next = self.norm_states(batch.next_states)
            q_next = masked_logits(self.critic(target=True).all_actions(x_next).min(0).values, batch.next_action_masks)
            v_next = q_next.max(-1).values
            rewards = self.nets["reward_scale"](batch.rewards)
            target = rewards + c.discount * (1.0 - batch.terminals) * v_next

        q_all = self.critic().all_actions(x)  # (n_critics, B, K)
        q_data = q_all.gather(-1, batch.actions.view(1, -1, 1).expand(q_all.shape[0], -1, 1)).squeeze(-1)
        td_loss = (q_data - target).pow(2).mean(1).sum()
        q_avail = q_all if batch.action_masks is None else q_all.masked_fill(~batch.action_masks, MASKED_LOGIT)
        gap = torch.logsumexp(q_avail, dim=-1) - q_data
        conservative_loss = gap.mean(1).sum()
        loss = td_loss + self.conservative_weight * conservative_loss
        info = {
            "critic/loss": loss,
            "critic/td_loss": td_loss,
            "critic/conservative_loss": conservative_loss,
            "critic/q_mean": q_data.mean(),
        }
        if self.closed_form:
            # The behaviour prior is cloned over every action (see IQL): its support threshold compares them all.
            log_prob = self.dist.log_prob(self.nets["actor"](x), batch.actions, None)
            actor_loss = -log_prob.mean()
            loss = loss + actor_loss
            info["actor/loss"] = actor_loss

        self.step("critic", self.critic().with_penalty(loss, c.action_shrink))
        polyak_update(self.nets["target_critic"], self.nets["critic"], c.tau)
        return self.finish_update(info)

    # -- continuous -------------------------------------------------------------------------------------------
    def _update_continuous(self, batch: Batch) -> dict[str, float]:
        c = self.config
        b, a_dim, n = batch.size, self.spec.action_dim, c.n_action_samples
        critic, actor = self.nets["critic"], self.nets["actor"]
        x = self.norm_states(batch.states)
        x_next = self.norm_states(batch.next_states)
        temperature = self.nets["temperature"]().detach()
        # The actor's output at s is computed once: its samples feed the conservative term (no gradient) and,
        # after the critic step, the actor loss (the actor's parameters have not changed in between).
        out = actor(x)

        def sample(o: PolicyOutput, rows: int) -> tuple[Tensor, Tensor]:
            return self.dist.rsample(o, self.noise(rows, a_dim))

        def repeat(o: PolicyOutput) -> PolicyOutput:
            assert o.mean is not None and o.log_std is not None
            return PolicyOutput(
                mean=o.mean.detach().repeat_interleave(n, 0), log_std=o.log_std.detach().repeat_interleave(n, 0)
            )

        with torch.no_grad():
            out_next = actor(x_next)
            a_next, logp_next = sample(out_next, b)
            q_next = self.nets["target_critic"](x_next, a_next).min(0).values
            rewards = self.nets["reward_scale"](batch.rewards)
            target = rewards + c.discount * (1.0 - batch.terminals) * (q_next - temperature * logp_next)
            # Importance-sampled logsumexp: uniform actions over the Box and policy actions at s and at s'.
            a_uniform = self.dist.scaler.from_unit(self.noise(b * n, a_dim, uniform=True) * 2.0 - 1.0)
            logp_uniform = -torch.log(2.0 * cast(Tensor, self.dist.scaler.half_range)).sum().expand(b * n)
            a_pi, logp_pi = sample(repeat(out), b * n)
            a_pi_next, logp_pi_next = sample(repeat(out_next), b * n)
            x_rep = x.repeat_interleave(n, 0)
            x_samples = torch.cat([x_rep, x_rep, x_rep], 0)
            a_samples = torch.cat([a_uniform, a_pi, a_pi_next], 0)
            logp_samples = torch.stack([logp_uniform, logp_pi, logp_pi_next], 0).view(1, 3, b, n)

        q_data = critic(x, batch.actions)  # (n_critics, B)
        td_loss = (q_data - target).pow(2).mean(1).sum()
        q_samples = critic(x_samples, a_samples).view(-1, 3, b, n) - logp_samples
        lse = torch.logsumexp(q_samples.permute(0, 2, 1, 3).reshape(-1, b, 3 * n), dim=-1)
        conservative_loss = (lse - q_data).mean(1).sum()
        critic_loss = td_loss + self.conservative_weight * conservative_loss
        self.step("critic", critic_loss)

        a_new, logp = sample(out, b)
        q_pi = critic(x, a_new).min(0).values
        actor_loss = (temperature * logp - q_pi).mean()
        self.step("actor", actor_loss)

        log_temperature = cast(LogTemperature, self.nets["temperature"]).log_value
        temperature_loss = -(log_temperature * (logp.detach() + self.target_entropy)).mean()
        self.step("temperature", temperature_loss)
        polyak_update(self.nets["target_critic"], critic, c.tau)
        return self.finish_update(
            {
                "critic/loss": critic_loss,
                "critic/td_loss": td_loss,
                "critic/conservative_loss": conservative_loss,
                "critic/q_mean": q_data.mean(),
                "actor/loss": actor_loss,
                "actor/entropy": -logp.mean(),
                "actor/temperature": temperature,
                "actor/temperature_loss": temperature_loss,
            }
        )
