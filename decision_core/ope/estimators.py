"""Off-policy estimators of a target policy's expected return from logged episodes.

Every estimator reads the same :class:`OPEInputs` (logged rewards, the behaviour policy's logged propensities,
the target policy's log-probability of each logged action, episode boundaries) and returns an
:class:`Estimate` with a percentile bootstrap confidence interval (episodes resampled with an explicit
``np.random.Generator``) and an effective sample size.

Episodes are laid out as a padded ``(E, T)`` matrix; after an episode ends its reward is 0 and its cumulative
importance weight stays at its last value, which is the usual convention for per-decision estimators over
episodes of unequal length.

- ``ips``: trajectory-wise importance sampling, ``mean_i W_i G_i`` (unbiased, high variance);
- ``snips``: self-normalised IS, ``sum_i W_i G_i / sum_i W_i`` (biased, consistent, much lower variance);
- ``pdwis``: per-decision weighted IS, ``sum_t gamma^t sum_i w_it r_it / sum_i w_it``;
- ``dr``: per-decision doubly robust with a learned Q model (Jiang & Li 2016), unbiased if either the weights
  or the model are right;
- ``wdr``: the same with per-step self-normalised weights (Thomas & Brunskill 2016);
- ``fqe``: the direct method, ``mean_i V(s_i0)`` from fitted Q evaluation (see :mod:`decision_core.ope.fqe`);
- ``mb``: model-based, the mean return of rollouts from each episode's first state in a learned model of the
  logs' dynamics (see :mod:`decision_core.ope.model`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from decision_core.errors import DecisionCoreError
from decision_core.schema import OPE_ESTIMATORS

#: Estimators that need the behaviour policy's propensities in the logs.
NEEDS_PROPENSITIES = frozenset({"ips", "snips", "pdwis", "dr", "wdr"})
#: Estimators that need a learned Q model (fitted Q evaluation).
NEEDS_Q_MODEL = frozenset({"dr", "wdr", "fqe"})
#: Estimators that need a learned model of the dynamics.
NEEDS_DYNAMICS = frozenset({"mb"})
ESTIMATORS: tuple[str, ...] = OPE_ESTIMATORS

#: Importance ratios are clipped here per step so one near-zero logged propensity cannot produce inf.
MAX_STEP_RATIO = 1e3


class OPEError(DecisionCoreError, ValueError):
    """Off-policy evaluation cannot run as asked (missing propensities, no episodes, bad inputs)."""


@dataclass(frozen=True)
class Estimate:
    """One estimator's value with its bootstrap interval and effective sample size."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    ess: float
    n_episodes: int
    confidence: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass
class OPEInputs:
    """Logged data as the estimators see it (all arrays over the N logged steps, episodes back to back).

    ``target_logp`` is the log-probability (discrete) or log-density (continuous) of each logged action under
    the target policy; ``behaviour_p`` the logged propensity (probability or density), NaN where not logged.
    ``q_sa`` / ``v_s`` are a learned model's ``Q(s_t, a_t)`` and ``E_{a~pi} Q(s_t, a)`` (for ``dr``/``wdr``),
    ``v0`` the model's value of each episode's first state (for ``fqe``), ``model_v0`` the mean rollout return
    from each episode's first state in the learned dynamics model (for ``mb``): (E,), or (E, members) with one
    column per ensemble member.
    """

    rewards: np.ndarray
    episode_starts: np.ndarray
    episode_ends: np.ndarray
    target_logp: np.ndarray | None = None
    behaviour_p: np.ndarray | None = None
    gamma: float = 1.0
    q_sa: np.ndarray | None = None
    v_s: np.ndarray | None = None
    v0: np.ndarray | None = None
    model_v0: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = int(np.shape(self.rewards)[0])
        if len(self.episode_starts) == 0:
            raise OPEError("off-policy evaluation needs at least one logged episode; the data has none")
        if not 0.0 < self.gamma <= 1.0:
            raise OPEError(f"discount gamma must be in (0, 1], got {self.gamma}")
        for name in ("target_logp", "behaviour_p", "q_sa", "v_s"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != (n,):
                raise OPEError(f"OPE input '{name}' must have shape ({n},) like rewards, got {np.shape(value)}")
        if not np.all(np.isfinite(self.rewards)):
            bad = int(np.flatnonzero(~np.isfinite(self.rewards))[0])
            raise OPEError(
                f"reward of logged step row {bad} is missing or not finite; OPE needs a reward on every step "
                f"(ingest logs with rewards or state the task as a reward expression)"
            )

    @property
    def n_episodes(self) -> int:
        return len(self.episode_starts)

    @property
    def lengths(self) -> np.ndarray:
        return (self.episode_ends - self.episode_starts).astype(np.int64)


def check_propensities(behaviour_p: np.ndarray | None, estimator: str) -> np.ndarray:
    """The logged propensities, or an :class:`OPEError` saying which rows lack them and what to do."""
    if behaviour_p is None:
        raise OPEError(
            f"estimator '{estimator}' needs the behaviour policy's propensities, and the logs have none; "
            f"log the probability of each action in the 'propensity' column, or use 'fqe' or 'mb' (they need none)"
        )
    bad = ~np.isfinite(behaviour_p) | (behaviour_p <= 0)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise OPEError(
            f"estimator '{estimator}' needs a positive logged propensity on every step, but {rows.size} of "
            f"{behaviour_p.size} steps have none or a non-positive one (first at step row {int(rows[0])}); "
            f"log the propensity of each action, or use 'fqe' or 'mb' (they need none)"
        )
    return behaviour_p


# -- padded episode layout -------------------------------------------------------------------------------------
def _pad(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """(E, T) matrix of per-step ``values``; positions past an episode's end hold ``fill``."""
    e, t = len(starts), int(lengths.max())
    out = np.full((e, t), fill, dtype=np.float64)
    col = np.arange(t)
    valid = col[None, :] < lengths[:, None]
    rows = starts[:, None] + np.minimum(col[None, :], np.maximum(lengths[:, None] - 1, 0))
    out[valid] = np.asarray(values, dtype=np.float64)[rows[valid]]
    return out


def _valid(lengths: np.ndarray) -> np.ndarray:
    return np.arange(int(lengths.max()))[None, :] < lengths[:, None]


def _cumulative_weights(inputs: OPEInputs, estimator: str) -> np.ndarray:
    """(E, T) cumulative importance weights ``w_it = prod_{k<=t} pi(a_k|s_k) / mu(a_k|s_k)``, held after the end."""
    if inputs.target_logp is None:
        raise OPEError(f"estimator '{estimator}' needs the target policy's log-probabilities of logged actions")
    mu = check_propensities(inputs.behaviour_p, estimator)
    log_ratio = np.asarray(inputs.target_logp, np.float64) - np.log(np.asarray(mu, np.float64))
    log_ratio = np.minimum(log_ratio, np.log(MAX_STEP_RATIO))
    lengths = inputs.lengths
    padded = _pad(log_ratio, inputs.episode_starts, lengths)
    padded[~_valid(lengths)] = 0.0  # weight is held after the end
    return np.exp(np.cumsum(padded, axis=1))


def _discounts(t: int, gamma: float) -> np.ndarray:
    return gamma ** np.arange(t, dtype=np.float64)


def _ess(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (0 when every weight is 0), scale-free: the weights are
    divided by the largest first, so weights whose squares underflow (1e-200) still count as at least one episode."""
    top = float(np.max(np.abs(weights))) if weights.size else 0.0
    if not top > 0.0:
        return 0.0
    w = weights / top
    return float(np.sum(w) ** 2 / np.sum(w**2))


# -- per-estimator statistics -------------------------------------------------------------------------------------
# Each estimator reduces to per-episode statistics X (E, ...) and a function f(sum over episodes of X) -> value, so
# a bootstrap replicate is f(counts @ X) with multinomial episode counts: vectorised, no Python loop over
# replicates.


@dataclass
class _Statistic:
    per_episode: np.ndarray  # (E, D)
    combine: Callable[[np.ndarray], np.ndarray]  # (R, D) sums -> (R,) values
    ess: float
    #: A direct method's values per episode and ensemble member (E, M), where it has them.
    by_member: np.ndarray | None = None
    #: Each member's effect, shrunk to the part rollout noise does not explain (:func:`_member_effects`): a
    #: replicate adds the mean of a resample of them.
    member_effects: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.by_member is not None:
            self.member_effects = _member_effects(self.by_member)

    @property
    def members(self) -> int:
        return 0 if self.by_member is None else self.by_member.shape[1]

    def values(self, counts: np.ndarray, member_counts: np.ndarray | None) -> np.ndarray:
        """(R,) values from (R, E) episode counts and, for a statistic over members, (R, members) member counts."""
        values = self.combine(counts @ self.per_episode)
        if self.member_effects is not None and member_counts is not None:
            values = values + member_counts @ self.member_effects / self.members
        return values

    def point(self) -> float:
        return float(self.values(np.ones((1, self.per_episode.shape[0])), None)[0])


def _member_effects(values: np.ndarray) -> np.ndarray:
    """(M,) each member's mean value over the episodes less the ensemble's, shrunk by the share of their spread
    that the rollouts' own noise accounts for.

    With ``v[e, m] = episode_e + member_m + noise``, resampling the episodes' means over members already carries
    the noise's share of the variance (``noise / (E M)``); the members' means carry it again, beside the members'
    own disagreement. Their spread is shrunk by the noise's expected part (the two-way residuals' mean square
    over ``E``, as in a random-effects analysis of variance), so each source counts once: with members that agree
    up to noise the interval is the episodes' alone.
    """
    e, m = values.shape
    effects = values.mean(axis=0) - values.mean()
    if m < 2 or e < 2:
        return np.zeros(m)
    spread = float(effects @ effects) / (m - 1)
    residuals = values - values.mean(axis=1, keepdims=True) - effects
    noise = float(np.sum(residuals**2)) / ((e - 1) * (m - 1)) / e
    return effects * np.sqrt(max(0.0, 1.0 - noise / spread)) if spread > 0.0 else np.zeros(m)


def _resamples(
    e: int, members: int, n_bootstrap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Multinomial counts of ``e`` episodes per replicate, and of the ensemble's ``members`` where there are any."""
    counts = rng.multinomial(e, np.full(e, 1.0 / e), size=n_bootstrap).astype(np.float64)
    if not members:
        return counts, None
    return counts, rng.multinomial(members, np.full(members, 1.0 / members), size=n_bootstrap).astype(np.float64)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _ips(inputs: OPEInputs, normalised: bool) -> _Statistic:
    w = _cumulative_weights(inputs, "snips" if normalised else "ips")
    r = _pad(inputs.rewards, inputs.episode_starts, inputs.lengths)
    r[~_valid(inputs.lengths)] = 0.0
    returns = r @ _discounts(r.shape[1], inputs.gamma)
    final_w = w[:, -1]
    x = np.stack([final_w * returns, final_w, np.ones_like(final_w)], axis=1)
    if normalised:
        return _Statistic(x, lambda s: _safe_ratio(s[:, 0], s[:, 1]), _ess(final_w))
    return _Statistic(x, lambda s: s[:, 0] / s[:, 2], _ess(final_w))


def _per_step_ess(w: np.ndarray, valid: np.ndarray) -> float:
    """Mean over steps of the ESS of the weights of the episodes still running at that step."""
    values = [_ess(w[valid[:, t], t]) for t in range(w.shape[1]) if valid[:, t].any()]
    return float(np.mean(values)) if values else 0.0


def _pdwis(inputs: OPEInputs) -> _Statistic:
    w = _cumulative_weights(inputs, "pdwis")
    valid = _valid(inputs.lengths)
    r = _pad(inputs.rewards, inputs.episode_starts, inputs.lengths)
    r[~valid] = 0.0
    t = w.shape[1]
    disc = _discounts(t, inputs.gamma)
    x = np.concatenate([w * r, w], axis=1)

    def combine(s: np.ndarray) -> np.ndarray:
        return _safe_ratio(s[:, :t], s[:, t:]) @ disc

    return _Statistic(x, combine, _per_step_ess(w, valid))


def _model_arrays(inputs: OPEInputs, estimator: str) -> tuple[np.ndarray, np.ndarray]:
    if inputs.q_sa is None or inputs.v_s is None:
        raise OPEError(f"estimator '{estimator}' needs a learned Q model (q_sa, v_s); fit one with fqe first")
    valid = _valid(inputs.lengths)
    q = _pad(inputs.q_sa, inputs.episode_starts, inputs.lengths)
    v = _pad(inputs.v_s, inputs.episode_starts, inputs.lengths)
    q[~valid] = 0.0
    v[~valid] = 0.0
    return q, v


def _dr(inputs: OPEInputs, weighted: bool) -> _Statistic:
    name = "wdr" if weighted else "dr"
    w = _cumulative_weights(inputs, name)
    valid = _valid(inputs.lengths)
    q, v = _model_arrays(inputs, name)
    r = _pad(inputs.rewards, inputs.episode_starts, inputs.lengths)
    r[~valid] = 0.0
    t = w.shape[1]
    disc = _discounts(t, inputs.gamma)
    w_prev = np.concatenate([np.ones((w.shape[0], 1)), w[:, :-1]], axis=1)
    # Past an episode's end, q = v = r = 0, so its held weight adds nothing to the numerators.
    if not weighted:
        per_episode = ((w * (r - q) + w_prev * v) @ disc)[:, None]
        x = np.concatenate([per_episode, np.ones((w.shape[0], 1))], axis=1)
        return _Statistic(x, lambda s: s[:, 0] / s[:, 1], _per_step_ess(w, valid))
    x = np.concatenate([w * (r - q), w_prev * v, w, w_prev], axis=1)

    def combine(s: np.ndarray) -> np.ndarray:
        a, b = _safe_ratio(s[:, :t], s[:, 2 * t : 3 * t]), _safe_ratio(s[:, t : 2 * t], s[:, 3 * t :])
        return (a + b) @ disc

    return _Statistic(x, combine, _per_step_ess(w, valid))


def _direct(inputs: OPEInputs, estimator: str, field: str, source: str) -> _Statistic:
    """A direct method: the mean over episodes of a model's value of each episode's first state.

    Values of shape (E, M) come from an ensemble's M members; the value is their mean, and a bootstrap replicate
    resamples the episodes (their means over the members) and, beside them, the members' effects."""
    values = getattr(inputs, field)
    if values is None:
        raise OPEError(f"estimator '{estimator}' needs {source} of each episode's first state ({field})")
    v0 = np.asarray(values, np.float64)
    e = inputs.n_episodes
    if v0.ndim not in (1, 2) or v0.shape[0] != e or v0.size == 0:
        raise OPEError(
            f"{field} must have one value per episode ({e},) or per episode and ensemble member ({e}, members), "
            f"got shape {v0.shape}"
        )
    return _mean_of(v0)


def _mean_of(values: np.ndarray) -> _Statistic:
    """The mean over episodes of (E,) values, or of (E, M) values per ensemble member (their mean per episode)."""
    e = values.shape[0]
    per_episode = values.mean(axis=1) if values.ndim == 2 else values
    x = np.stack([per_episode, np.ones(e)], axis=1)
    return _Statistic(x, lambda s: s[:, 0] / s[:, 1], float(e), values if values.ndim == 2 else None)


_STATISTICS: dict[str, Callable[[OPEInputs], _Statistic]] = {
    "ips": lambda i: _ips(i, normalised=False),
    "snips": lambda i: _ips(i, normalised=True),
    "pdwis": _pdwis,
    "dr": lambda i: _dr(i, weighted=False),
    "wdr": lambda i: _dr(i, weighted=True),
    "fqe": lambda i: _direct(i, "fqe", "v0", "the fitted Q model's value"),
    "mb": lambda i: _direct(i, "mb", "model_v0", "the dynamics model's rollout return"),
}


def _checked(name: str, confidence: float, n_bootstrap: int) -> None:
    if name not in _STATISTICS:
        raise OPEError(f"unknown estimator '{name}'; choose from {', '.join(ESTIMATORS)}")
    if not 0.0 < confidence < 1.0:
        raise OPEError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 1:
        raise OPEError(f"n_bootstrap must be >= 1, got {n_bootstrap}")


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(low), float(high)


def estimate(
    name: str,
    inputs: OPEInputs,
    *,
    rng: np.random.Generator,
    n_bootstrap: int = 200,
    confidence: float = 0.9,
) -> Estimate:
    """Run estimator ``name`` with a percentile bootstrap interval over episodes at level ``confidence``."""
    _checked(name, confidence, n_bootstrap)
    stat = _STATISTICS[name](inputs)
    e = stat.per_episode.shape[0]
    value = stat.point()
    low, high = _interval(stat.values(*_resamples(e, stat.members, n_bootstrap, rng)), confidence)
    return Estimate(
        estimator=name, value=value, ci_low=low, ci_high=high, ess=float(stat.ess), n_episodes=e, confidence=confidence
    )


@dataclass(frozen=True)
class Difference:
    """One estimator's estimate of ``value(policy) - value(baseline)`` on the same logged episodes, with a
    paired bootstrap interval (each replicate resamples the episodes once and re-estimates both values on them),
    and each side's own estimate."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    policy: Estimate
    baseline: Estimate
    #: Share of the bootstrap replicates in which the policy's value is below the baseline's.
    share_worse: float

    @property
    def worse(self) -> bool:
        """The policy is worse than the baseline with the interval's confidence (its upper end is below 0)."""
        return self.ci_high < 0.0

    def verdict(self, min_ess: float) -> str:
        """ "not evaluable" (the policy's estimate rests on fewer than ``min_ess`` effective episodes), "worse",
        "better" (the interval above 0) or "no clear difference": how the guard and ``ope --baseline`` read it."""
        if self.policy.ess < min_ess:
            return "not evaluable"
        if self.worse:
            return "worse"
        return "better" if self.ci_low > 0.0 else "no clear difference"

    def to_dict(self) -> dict[str, object]:
        return {
            "estimator": self.estimator,
            "value": self.value,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "share_worse": self.share_worse,
            "confidence": self.policy.confidence,
            "n_episodes": self.policy.n_episodes,
            "policy": self.policy.to_dict(),
            "baseline": self.baseline.to_dict(),
        }


def compare(
    name: str,
    inputs: OPEInputs,
    baseline: OPEInputs,
    *,
    rng: np.random.Generator,
    n_bootstrap: int = 200,
    confidence: float = 0.9,
) -> Difference:
    """Estimator ``name``'s estimate of the difference between two policies' values, evaluated on the same logged
    episodes (``inputs`` and ``baseline`` differ only in the target policy's log-probabilities and models).

    The interval is a paired percentile bootstrap: every replicate draws one multinomial resample of the
    episodes and applies it to both policies' statistics. Both estimates move together with the episodes drawn
    (an episode of high return weighs in both), so the difference's interval is far narrower than either value's
    when the policies are alike; comparing one policy's interval with the other's point estimate ignores that,
    and also ignores the baseline's own noise. With model values per ensemble member, each replicate also
    resamples the members, the same for both policies: the difference's interval widens where the members
    disagree on the difference (beyond what the rollouts' noise explains), not where they only disagree on the
    level both policies share.
    """
    _checked(name, confidence, n_bootstrap)
    same = (
        inputs.n_episodes == baseline.n_episodes
        and np.array_equal(inputs.episode_starts, baseline.episode_starts)
        and np.array_equal(inputs.episode_ends, baseline.episode_ends)
    )
    if not same:
        raise OPEError(
            f"a paired comparison needs both policies evaluated on the same episodes; got {inputs.n_episodes} and "
            f"{baseline.n_episodes} episodes with different boundaries"
        )
    a, b = _STATISTICS[name](inputs), _STATISTICS[name](baseline)
    if a.members != b.members:
        raise OPEError(
            f"a paired comparison needs both policies' model values from the same ensemble; got {a.members} and "
            f"{b.members} members"
        )
    e = inputs.n_episodes
    values = [a.point(), b.point()]
    resample = _resamples(e, a.members, n_bootstrap, rng)
    rep_a, rep_b = a.values(*resample), b.values(*resample)
    # Two sums over the same episodes that agree up to float round-off are not a difference (a candidate must not
    # be called worse by 1e-16).
    tol = 1e-9 * max(1.0, abs(values[0]), abs(values[1]))
    if a.by_member is not None and b.by_member is not None:
        # The members' effects on the difference, shrunk for the rollouts' noise in the difference itself.
        diff = _mean_of(a.by_member - b.by_member).values(*resample)
    else:
        diff = rep_a - rep_b
    diff[np.abs(diff) <= tol] = 0.0
    delta = values[0] - values[1]

    def side(value: float, stat: _Statistic, replicates: np.ndarray) -> Estimate:
        low, high = _interval(replicates, confidence)
        return Estimate(name, value, low, high, float(stat.ess), e, confidence)

    low, high = _interval(diff, confidence)
    return Difference(
        estimator=name,
        value=0.0 if abs(delta) <= tol else delta,
        ci_low=low,
        ci_high=high,
        policy=side(values[0], a, rep_a),
        baseline=side(values[1], b, rep_b),
        share_worse=float(np.mean(diff < 0.0)),
    )


def on_policy_value(inputs: OPEInputs) -> float:
    """The logged (behaviour) policy's own average discounted return: the baseline every estimate is read against."""
    r = _pad(inputs.rewards, inputs.episode_starts, inputs.lengths)
    r[~_valid(inputs.lengths)] = 0.0
    return float(np.mean(r @ _discounts(r.shape[1], inputs.gamma)))
