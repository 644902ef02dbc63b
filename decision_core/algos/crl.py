"""CRL: contrastive RL. The critic is a classifier, the policy climbs it.

Representations ``phi(s, a)`` (discrete: a state representation modulated elementwise by a learned per-action
vector) and ``psi(g)`` (twin ensemble) are trained so that ``phi(s_i, a_i) . psi(g_j)`` tells
whether outcome ``g_j`` is reached in the (discounted) future of ``(s_i, a_i)`` (positives: the batch diagonal,
goals drawn geometrically ahead in the same episode; negatives: the other goals of the batch). That inner
product is a goal-conditioned Q-function up to a monotone transform, so the policy maximises it with a
behaviour-cloning anchor (DDPG+BC): continuous actions through the policy's mode, discrete actions through
the exact expectation ``sum_a pi(a | s, g) Q(s, a, g)`` over available actions.
Partial goals: ``psi`` sees the goal values zeroed where unspecified and the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from decision_core.algos.base import Agent, GoalConditionedConfig
from decision_core.algos.nets import ActionScaler, EnsembleMLP, PolicyNet, PolicyOutput, masked_logits
from decision_core.data.dataset import Batch
from decision_core.data.goals import GoalSamplerConfig


@dataclass(frozen=True)
class CRLConfig(GoalConditionedConfig):
    #: Width of the representations phi(s, a) and psi(g).
    rep_dim: int = 64
    #: Representation ensemble size (the actor uses the minimum over members).
    n_critics: int = 2
    #: Weight of the behaviour-cloning term (log-likelihood of the logged action) in the actor loss.
    bc_coef: float = 0.1
    #: LayerNorm in the representation networks.
    layer_norm: bool = True
    #: "infonce": softmax over the batch's goals for each (s, a) (learns fast); "binary": a sigmoid per pair
    #: (OGBench's default, slower to separate positives from the many negatives).
    contrastive_loss: str = "infonce"
    #: Value goals: outcomes ahead in the same episode with geometric offsets (the contrastive positives);
    #: actor goals: ahead in the same episode, uniform (OGBench's CRL mixture).
    goals: GoalSamplerConfig = field(
        default_factory=lambda: GoalSamplerConfig(
            value_p_curgoal=0.0,
            value_p_trajgoal=1.0,
            value_p_randomgoal=0.0,
            value_geom_sample=True,
            actor_p_curgoal=0.0,
            actor_p_trajgoal=1.0,
            actor_p_randomgoal=0.0,
            actor_geom_sample=False,
        )
    )

    def validate(self) -> None:
        super().validate()
        self.require(self.rep_dim >= 1, "rep_dim", "must be >= 1")
        self.require(self.n_critics >= 1, "n_critics", "must be >= 1")
        self.require(self.bc_coef >= 0.0, "bc_coef", "must be >= 0")
        self.require(
            self.contrastive_loss in ("infonce", "binary"), "contrastive_loss", "must be 'infonce' or 'binary'"
        )


class CRLAgent(Agent):
    name = "crl"
    goal_conditioned = True
    config_class = CRLConfig
    config: CRLConfig

    def build_networks(self) -> dict[str, nn.Module]:
        c = self.config
        s, g = self.spec.state_dim, 2 * self.n_outcomes
        sa_in = s if self.spec.discrete else s + self.spec.action_dim
        nets: dict[str, nn.Module] = {}
        if self.spec.discrete:
            # phi(s, a) = u(s) * e_a: one state representation modulated per action, so evaluating every action
            # costs K * rep_dim multiplies, not a K * rep_dim output layer (domains may have hundreds of actions).
            e = torch.randn(c.n_critics, self.spec.n_actions, c.rep_dim)
            nets["action_embedding"] = _Embedding(e)
        return {
            **nets,
            "phi": EnsembleMLP(c.n_critics, sa_in, c.hidden_dims, c.rep_dim, layer_norm=c.layer_norm),
            "psi": EnsembleMLP(c.n_critics, g, c.hidden_dims, c.rep_dim, layer_norm=c.layer_norm),
            "actor": PolicyNet(self.spec, self.input_dim, c.hidden_dims),
            "scaler": ActionScaler(self.spec),
        }

    def policy(self, states: Tensor, goals: Tensor | None, goal_masks: Tensor | None) -> PolicyOutput:
        return self.nets["actor"](self.inputs(states, goals, goal_masks))

    # -- the critic -------------------------------------------------------------------------------------------
    def phi(self, states: Tensor, actions: Tensor | None) -> Tensor:
        """(n, B, R) for the given actions, or (n, B, K, R) for every discrete action when ``actions`` is None."""
        s = self.norm_states(states)
        if not self.spec.discrete:
            assert actions is not None
            scaler = cast(ActionScaler, self.nets["scaler"])
            return self.nets["phi"](torch.cat([s, scaler.to_unit(actions)], dim=-1))
        u = self.nets["phi"](s)  # (n, B, R)
        e = cast(_Embedding, self.nets["action_embedding"]).weight  # (n, K, R)
        if actions is None:
            return u.unsqueeze(2) * e.unsqueeze(1)
        return u * e[:, actions]

    def psi(self, goals: Tensor, masks: Tensor) -> Tensor:
        return self.nets["psi"](self.encode_goals(goals, masks))

    def critic_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        assert batch.value_goals is not None and batch.value_goal_masks is not None
        phi = self.phi(batch.states, batch.actions)  # (n, B, R)
        psi = self.psi(batch.value_goals, batch.value_goal_masks)  # (n, B, R)
        logits = torch.bmm(phi, psi.transpose(1, 2)) / math.sqrt(self.config.rep_dim)  # (n, B, B)
        b = logits.shape[-1]
        if self.config.contrastive_loss == "infonce":
            target = torch.arange(b, device=logits.device).expand(logits.shape[0], b)
            loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(-1).sum()
        else:
            labels = torch.eye(b, device=logits.device).expand_as(logits)
            loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean((1, 2)).sum()
        diag = torch.diagonal(logits, dim1=1, dim2=2)
        correct = (logits.argmax(-1) == torch.arange(logits.shape[-1], device=logits.device)).float().mean()
        return loss, {
            "critic/loss": loss,
            "critic/logits_pos": diag.mean(),
            "critic/logits_neg": (logits.sum((1, 2)) - diag.sum(-1)).mean()
            / max(1, diag.shape[-1] ** 2 - diag.shape[-1]),
            "critic/accuracy": correct,
        }

    def q_values(self, states: Tensor, actions: Tensor | None, goals: Tensor, masks: Tensor) -> Tensor:
        """min over the ensemble of phi . psi / sqrt(R): (B,) for given actions, (B, K) for all discrete ones."""
        psi = self.psi(goals, masks)
        phi = self.phi(states, actions)
        if actions is None:
            q = (phi * psi.unsqueeze(2)).sum(-1)
        else:
            q = (phi * psi).sum(-1)
        return q.min(0).values / math.sqrt(self.config.rep_dim)

    # -- the actor --------------------------------------------------------------------------------------------
    def actor_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        assert batch.actor_goals is not None and batch.actor_goal_masks is not None
        goals, masks = batch.actor_goals, batch.actor_goal_masks
        out = self.policy(batch.states, goals, masks)
        log_prob = self.dist.log_prob(out, batch.actions, batch.action_masks)
        if self.spec.discrete:
            assert out.logits is not None
            probs = torch.softmax(masked_logits(out.logits, batch.action_masks), -1)
            q_all = self.q_values(batch.states, None, goals, masks)
            q = (probs * q_all).sum(-1)
        else:
            q = self.q_values(batch.states, self.dist.greedy(out), goals, masks)
        # Scale-free: the Q term is divided by its (detached) magnitude, so bc_coef means the same everywhere.
        q_loss = -q.mean() / q.abs().mean().detach().clamp_min(1e-6)
        bc_loss = -self.config.bc_coef * log_prob.mean()
        loss = q_loss + bc_loss
        return loss, {
            "actor/loss": loss,
            "actor/q_loss": q_loss,
            "actor/log_prob": log_prob.mean(),
            "actor/q": q.mean(),
        }

    def update(self, batch: Batch) -> dict[str, float]:
        self.require_goals(batch)
        critic_loss, critic_info = self.critic_loss(batch)
        self.step("critic", critic_loss)
        # The actor climbs the updated critic; its loss reaches only the actor's parameters.
        actor_loss, actor_info = self.actor_loss(batch)
        self.step("actor", actor_loss)
        return self.finish_update({**critic_info, **actor_info})

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        critic = [self.nets[k] for k in ("phi", "psi", "action_embedding") if k in self.nets]
        return {"critic": self.adam(*critic), "actor": self.adam(self.nets["actor"])}


class _Embedding(nn.Module):
    """A learned (n, K, R) table of per-action modulations."""

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init)
