"""QRL: quasimetric RL. Steps to a goal learned as a quasimetric distance; a critic reads it one step ahead.

A state encoder ``psi(s)`` and a goal encoder ``phi(g, mask)`` map into one latent space, where a quasimetric gives
``d(x, y)``: zero on the diagonal, the triangle inequality built in, and not symmetric (a stock-out is one step from
full shelves, not the reverse). Two are available: a metric residual network (MRN; Liu et al., 2022), the default,
and an interval quasimetric embedding (IQE; Wang & Isola, 2022), which sorts per distance. Training is QRL's
constrained problem (Wang et al., 2023): push the distance from a state to random goals up, while every logged
step stays at most one unit long,

    max E[d(psi(s), phi(g_random))]  s.t.  E[relu(d(psi(s), psi(s')) - 1)^2 + relu(d(psi(s), phi(o(s'))) - 1)^2] <= eps

(a Lagrange multiplier enforces the constraint; the distance term is softened as ``scale * softplus(5 - d / scale)``
so unreachable goals stop pulling). By the triangle inequality a goal reached ``k`` logged steps after ``s`` stays
within ``k``, and the maximisation pushes everything else as far as the constraint allows, so ``d`` approaches the
shortest number of steps in the logs. Goals here are outcome vectors, possibly partial: the second constraint ties
each goal embedding to the states whose outcomes reach it (the mask travels with the goal, as in the sampler).

The policy needs the distance after an action. A critic ``Q(s, a, g)`` regresses ``-1 - d(psi(s'), phi(g))`` on the
logged transitions (the metric detached), which is the expected steps-to-go after ``a`` also where the world is
random (inventory demand, a user's reply): a latent model of ``psi(s')`` (QRL's choice for deterministic control)
would predict the mean latent, whose distance is not the mean distance. Discrete actions use the exact closed form
``log pi_b + temperature * Q`` over the actions (as GCIQL does, with its support threshold and its shared action
head); Box actions (or ``extraction="awr"``) fit the actor by advantage-weighted regression with
``A = Q(s, a, g) + d(psi(s), phi(g))``. With no goal specified the policy is the behaviour prior.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from decision_core.algos.base import AdvantageExtractionAgent, GoalConditionedConfig, validate_extraction
from decision_core.algos.nets import MLP, Critic, PolicyNet, PolicyOutput, awr_weights, tilted_logits
from decision_core.data.dataset import Batch
from decision_core.data.goals import GoalSamplerConfig

#: The latent distances QRL can use (``QRLConfig.quasimetric``).
QUASIMETRICS = ("iqe", "mrn")


@dataclass(frozen=True)
class QRLConfig(GoalConditionedConfig):
    #: Width of the latent space the state and goal encoders map into.
    latent_dim: int = 256
    #: The latent distance: "mrn" (metric residual network: a Euclidean half plus an asymmetric max) or "iqe"
    #: (interval quasimetric embedding, a sort per distance: 9.6 ms forward and backward against MRN's 0.83 at batch
    #: 256 and width 256 on one CPU thread; goal success, one seed, 30 CPU-s, IQE at width 64 against MRN at 256:
    #: inventory 65.0% vs 70.6%, dialogue 70.9% vs 65.3%).
    quasimetric: str = "mrn"
    #: IQE components: the latent is split into this many groups, each an interval-union distance; the distance
    #: is a learned mix of their maximum and mean.
    components: int = 8
    #: Slack of the local constraint (mean squared excess of one logged step over one unit).
    eps: float = 0.05
    #: Learning rate of the Lagrange multiplier (Adam on its log-like parameter): fast enough that the constraint
    #: binds within the few thousand updates a CPU budget buys, where the networks' rate would take far longer.
    multiplier_lr: float = 0.01
    #: Scale of the softened distance objective ``scale * softplus(5 - d / scale)``: distances well beyond
    #: ``5 * scale`` steps stop being pushed further.
    distance_scale: float = 100.0
    #: Inverse temperature of the improved policy ``pi_b * exp(temperature * A)``, A in steps to the goal.
    #: None = 20.0 for the closed form, 3.0 for AWR (whose weights saturate at ``max_weight``).
    awr_temperature: float | None = None
    #: Discrete actions: "closed_form" (exact logits over the actions) or "awr" (an advantage-weighted actor, as for
    #: Box actions, which always use AWR).
    extraction: str = "closed_form"
    #: Closed form: actions the behaviour takes at ``s`` with less than this fraction of the probability of its most
    #: likely action are never chosen (the critic never saw them there; 0 = keep every action).
    support: float = 0.1
    #: Cap on the advantage weights (keeps the actor loss bounded).
    max_weight: float = 100.0
    #: LayerNorm in the encoders and the critic.
    layer_norm: bool = True
    #: Discrete actions: weight of the penalty that keeps each action's critic head near one shared by all actions
    #: (0: a plain head per action); see ``IQLConfig.action_shrink``.
    action_shrink: float = 0.01
    #: Value goals: outcomes of random logged steps (the distances pushed apart); actor goals: later in the same
    #: episode, uniform (OGBench's QRL mixture). Half the goals are partial.
    goals: GoalSamplerConfig = field(
        default_factory=lambda: GoalSamplerConfig(
            value_p_curgoal=0.0,
            value_p_trajgoal=0.0,
            value_p_randomgoal=1.0,
            value_geom_sample=True,
            actor_p_curgoal=0.0,
            actor_p_trajgoal=1.0,
            actor_p_randomgoal=0.0,
            actor_geom_sample=False,
        )
    )

    def validate(self) -> None:
        super().validate()
        self.require(self.latent_dim >= 1, "latent_dim", "must be >= 1")
        self.require(self.components >= 1, "components", "must be >= 1")
        self.require(self.quasimetric in QUASIMETRICS, "quasimetric", f"must be one of {QUASIMETRICS}")
        self.require(
            self.quasimetric != "iqe" or self.latent_dim % self.components == 0,
            "latent_dim",
            "must be a multiple of components",
        )
        self.require(self.quasimetric != "mrn" or self.latent_dim >= 2, "latent_dim", "must be >= 2 for mrn")
        self.require(self.eps > 0.0, "eps", "must be > 0")
        self.require(self.multiplier_lr > 0.0, "multiplier_lr", "must be > 0")
        self.require(self.distance_scale > 0.0, "distance_scale", "must be > 0")
        validate_extraction(self, "awr_temperature")
        self.require(self.action_shrink >= 0.0, "action_shrink", "must be >= 0")


class IntervalQuasimetric(nn.Module):
    """IQE: ``d(x, y)`` for latents split into ``components`` groups; in each group, the total length of the union of
    the intervals ``[x_i, y_i]`` where ``x_i < y_i``; then ``alpha * max + (1 - alpha) * mean`` over the groups, with
    ``alpha`` learned. A quasimetric for any latents: ``d(x, x) = 0`` and ``d(x, z) <= d(x, y) + d(y, z)``."""

    def __init__(self, components: int) -> None:
        super().__init__()
        self.components = components
        self.raw_alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """(...) distances from ``x`` (..., L) to ``y`` (..., L), broadcast against each other."""
        x, y = torch.broadcast_tensors(x.float(), y.float())
        x = x.unflatten(-1, (self.components, -1))
        y = y.unflatten(-1, (self.components, -1))
        m = x.shape[-1]
        valid = (x < y).float()
        ends, order = torch.cat([x, y], dim=-1).sort(dim=-1)
        # Walking the sorted ends: an interval's start raises the coverage, its end lowers it (invalid ones do
        # nothing). The union's length is the sum of (end - start) over the runs where the coverage is positive.
        step = torch.gather(valid, -1, order % m) * torch.where(order < m, 1.0, -1.0)
        covered = (step.cumsum(-1) > 0.5).float()
        change = torch.cat([covered[..., :1], covered.diff(dim=-1)], dim=-1)
        lengths = -(ends * change).sum(-1)  # (..., components)
        alpha = torch.sigmoid(self.raw_alpha)
        return alpha * lengths.max(-1).values + (1.0 - alpha) * lengths.mean(-1)


class MetricResidual(nn.Module):
    """MRN (Liu et al., 2022): the latent's first half gives a Euclidean distance, its second half an asymmetric
    ``max_i relu(y_i - x_i)``; their sum is a quasimetric. Cheaper than IQE (no sort), and coarser."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = torch.broadcast_tensors(x.float(), y.float())
        half = x.shape[-1] // 2
        sym = (x[..., :half] - y[..., :half]).pow(2).sum(-1).add(1e-8).sqrt()
        asym = F.relu(y[..., half:] - x[..., half:]).max(-1).values
        return sym + asym


class _Multiplier(nn.Module):
    """The constraint's Lagrange multiplier, ``softplus(raw) >= 0``."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(()))

    def forward(self) -> Tensor:
        return F.softplus(self.raw)


class QRLAgent(AdvantageExtractionAgent):
    name = "qrl"
    goal_conditioned = True
    config_class = QRLConfig
    beta_field = "awr_temperature"
    tilt_needs_goal = True
    config: QRLConfig

    def build_networks(self) -> dict[str, nn.Module]:
        c = self.config
        hidden = tuple(c.hidden_dims)
        return {
            "state_encoder": MLP(self.spec.state_dim, hidden, c.latent_dim, layer_norm=c.layer_norm),
            "goal_encoder": MLP(2 * self.n_outcomes, hidden, c.latent_dim, layer_norm=c.layer_norm),
            "quasimetric": IntervalQuasimetric(c.components) if c.quasimetric == "iqe" else MetricResidual(),
            "multiplier": _Multiplier(),
            "critic": Critic(
                self.spec, self.input_dim, hidden, n=1, layer_norm=c.layer_norm, shared_action_head=c.action_shrink > 0
            ),
            "actor": PolicyNet(self.spec, self.input_dim, hidden),
        }

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam over every network; the multiplier in a parameter group of its own rate."""
        multiplier = list(self.nets["multiplier"].parameters())
        rest = [p for k, m in self.nets.items() if k != "multiplier" for p in m.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": rest}, {"params": multiplier, "lr": self.config.multiplier_lr}]
        return {"all": torch.optim.Adam(groups, lr=self.config.lr, fused=True)}

    def policy(self, states: Tensor, goals: Tensor | None, goal_masks: Tensor | None) -> PolicyOutput:
        x = self.inputs(states, goals, goal_masks)
        prior = self.nets["actor"](x)
        if goals is None or goal_masks is None or not self.closed_form:
            return prior
        assert prior.logits is not None
        q = cast(Critic, self.nets["critic"]).all_actions(x)[0]
        tilted = tilted_logits(prior.logits, q, self.beta, self.config.support)
        # No goal specified: the behaviour prior alone (the critic's values there say nothing).
        return PolicyOutput(logits=torch.where(goal_masks.any(-1, keepdim=True), tilted, prior.logits))

    # -- the metric -------------------------------------------------------------------------------------------
    def encode_states(self, states: Tensor) -> Tensor:
        return self.nets["state_encoder"](self.norm_states(states))

    def encode_goal(self, goals: Tensor, masks: Tensor) -> Tensor:
        return self.nets["goal_encoder"](self.encode_goals(goals, masks))

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        return self.nets["quasimetric"](x, y)

    def metric_loss(self, batch: Batch, z: Tensor, z_next: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        assert batch.value_goals is not None and batch.value_goal_masks is not None
        c = self.config
        masks = batch.value_goal_masks
        far = self.distance(z, self.encode_goal(batch.value_goals, masks))
        spread = (c.distance_scale * F.softplus(5.0 - far / c.distance_scale)).mean()
        # One logged step: to the next state, and to the goal of the next state's outcomes (same features specified).
        reached = self.encode_goal(batch.next_states[:, self.spec.outcome_index], masks)
        step = self.distance(z, z_next)
        reach = self.distance(z, reached)
        local = (F.relu(step - 1.0).pow(2) + F.relu(reach - 1.0).pow(2)).mean()
        multiplier = self.nets["multiplier"]()
        # The encoders minimise spread + lambda * local; lambda grows while the constraint is broken.
        loss = spread + multiplier.detach() * local + multiplier * (c.eps - local.detach())
        return loss, {
            "metric/loss": spread,
            "metric/local_loss": local,
            "metric/distance_random": far.mean(),
            "metric/distance_step": step.mean(),
            "metric/lambda": multiplier,
        }

    # -- the critic and the actor -----------------------------------------------------------------------------
    def critic_loss(
        self, batch: Batch, x: Tensor, z: Tensor, z_next: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Q(s, a, g) regressed to ``-1 - d(psi(s'), phi(g))`` for the actor's goals; also returns the advantage."""
        assert batch.actor_goals is not None and batch.actor_goal_masks is not None
        with torch.no_grad():
            g = self.encode_goal(batch.actor_goals, batch.actor_goal_masks)
            to_go = self.distance(z_next, g)
            here = self.distance(z, g)
        target = -1.0 - to_go
        critic = cast(Critic, self.nets["critic"])
        q = critic(x, batch.actions)  # (1, B)
        loss = (q - target).pow(2).mean()
        total = critic.with_penalty(loss, self.config.action_shrink)
        adv = q.detach()[0] + here
        return total, adv, {"critic/loss": loss, "critic/q_mean": q.mean(), "critic/adv_mean": adv.mean()}

    def actor_loss(self, batch: Batch, x: Tensor, adv: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        assert batch.actor_goal_masks is not None
        if self.closed_form:  # the actor is the behaviour prior pi_b; the critic tilts it in policy()
            weights = torch.ones(x.shape[0], device=x.device)
        else:
            # An empty goal asks for the logs' behaviour: plain likelihood there.
            awr = awr_weights(adv, self.beta, self.config.max_weight)
            weights = torch.where(batch.actor_goal_masks.any(-1), awr, torch.ones_like(awr))
        masks = None if self.closed_form else batch.action_masks
        log_prob = self.dist.log_prob(self.nets["actor"](x), batch.actions, masks)
        loss = -(weights * log_prob).mean()
        return loss, {"actor/loss": loss, "actor/log_prob": log_prob.mean(), "actor/adv_weight": weights.mean()}

    def update(self, batch: Batch) -> dict[str, float]:
        self.require_goals(batch)
        z = self.encode_states(batch.states)
        z_next = self.encode_states(batch.next_states)
        metric_loss, metric_info = self.metric_loss(batch, z, z_next)
        x = self.inputs(batch.states, batch.actor_goals, batch.actor_goal_masks)
        critic_loss, adv, critic_info = self.critic_loss(batch, x, z.detach(), z_next.detach())
        actor_loss, actor_info = self.actor_loss(batch, x, adv)
        # The three losses touch disjoint parameters (the critic's targets and the actor's weights are detached), so
        # one step on their sum is three separate steps in one optimiser call.
        self.step("all", metric_loss + critic_loss + actor_loss)
        return self.finish_update({**metric_info, **critic_info, **actor_info})
