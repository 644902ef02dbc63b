"""OPE estimators against the exact value of a policy in a small chain world."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from decision_core.ope import (
    Estimate,
    FQEConfig,
    MixturePolicy,
    ModelConfig,
    OPEError,
    OPEInputs,
    TargetPolicy,
    UniformPolicy,
    compare,
    compare_policies,
    default_estimator,
    estimate,
    evaluate_policy,
    evaluate_tasks,
    goal_task,
    reward_task,
    supported_estimators,
    weighs_by_default,
)
from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature
from decision_core.store import DomainArrays

SPEC = DomainSpec(
    name="chain",
    version="1",
    state=(Feature("x"),),
    outcomes=(OutcomeFeature("x", tolerance=0.1),),
    actions=DiscreteActions(labels=("left", "right")),
    reward="logged",
)
GOAL_X, HORIZON = 4, 8


class RightProb(TargetPolicy):
    """Moves right with probability ``p`` everywhere."""

    def __init__(self, p: float) -> None:
        self.spec, self.p, self.name = SPEC, p, f"right {p:g}"

    def probs(self, states: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        return np.tile([1.0 - self.p, self.p], (len(states), 1))


def simulate(p_right: float, episodes: int, rng: np.random.Generator) -> DomainArrays:
    """Chain 0..4: right +1, left -1 (floored at 0); reward 1 and termination on reaching 4."""
    rows: dict[str, list] = {k: [] for k in ("s", "a", "r", "ns", "p", "term")}
    starts, ends = [], []
    for _ in range(episodes):
        x = 0
        starts.append(len(rows["s"]))
        for _t in range(HORIZON):
            a = int(rng.random() < p_right)
            nx = min(x + 1, GOAL_X) if a else max(x - 1, 0)
            done = nx == GOAL_X
            for k, v in zip(rows, (x, a, float(done), nx, p_right if a else 1 - p_right, done), strict=True):
                rows[k].append(v)
            x = nx
            if done:
                break
        ends.append(len(rows["s"]))
    n = len(rows["s"])
    return DomainArrays(
        spec=SPEC,
        states=np.array(rows["s"], np.float32)[:, None],
        actions=np.array(rows["a"], np.float32)[:, None],
        next_states=np.array(rows["ns"], np.float32)[:, None],
        rewards=np.array(rows["r"], np.float32),
        propensities=np.array(rows["p"], np.float32),
        terminated=np.array(rows["term"], np.bool_),
        truncated=np.zeros(n, np.bool_),
        action_masks=None,
        episode_starts=np.array(starts, np.int64),
        episode_ends=np.array(ends, np.int64),
    )


def true_value(p_right: float) -> float:
    """Exact probability of reaching the end of the chain within the horizon (dynamic programming)."""
    dist = np.zeros(GOAL_X + 1)
    dist[0] = 1.0
    reached = 0.0
    for _ in range(HORIZON):
        nxt = np.zeros_like(dist)
        for x in range(GOAL_X):
            nxt[min(x + 1, GOAL_X)] += dist[x] * p_right
            nxt[max(x - 1, 0)] += dist[x] * (1 - p_right)
        reached += nxt[GOAL_X]
        nxt[GOAL_X] = 0.0
        dist = nxt
    return reached


@pytest.fixture(scope="module")
def logs() -> DomainArrays:
    return simulate(0.5, 3000, np.random.default_rng(0))


FAST_FQE = FQEConfig(hidden=(32, 32), steps=1500, batch_size=256, learning_rate=3e-3, tau=0.05)
FAST_MODEL = ModelConfig(hidden=(32, 32), steps=1500, learning_rate=3e-3)
#: How close each estimate must come to the exact value. The chain moves by +-1, which mb's Gaussian model of the
#: change of state can only blur, so its level is allowed more slack (measured 0.03-0.06 off).
TOLERANCE = {"mb": 0.1}


@pytest.mark.parametrize("p_target", [0.3, 0.8])
def test_every_estimator_recovers_the_exact_value(logs: DomainArrays, p_target: float) -> None:
    truth = true_value(p_target)
    report = evaluate_policy(
        logs, RightProb(p_target), rng=np.random.default_rng(1), fqe=FAST_FQE, model=FAST_MODEL, n_bootstrap=300
    )
    assert set(report.estimates) == {"ips", "snips", "pdwis", "dr", "wdr", "fqe", "mb"}
    for name, e in report.estimates.items():
        assert abs(e.value - truth) < TOLERANCE.get(name, 0.06), (name, e.value, truth)
        assert e.ci_low - 1e-9 <= e.value <= e.ci_high + 1e-9
    # The weighted estimators' intervals cover the truth (at 90% with the generous 0.02 slack).
    for name in ("snips", "pdwis", "wdr"):
        e = report.estimates[name]
        assert e.ci_low - 0.02 <= truth <= e.ci_high + 0.02, (name, e, truth)
    assert abs(report.behaviour_value - true_value(0.5)) < 0.05


def test_estimates_rank_policies_by_their_true_value(logs: DomainArrays) -> None:
    ps = [0.2, 0.4, 0.6, 0.8]
    values = [
        evaluate_policy(logs, RightProb(p), rng=np.random.default_rng(2), estimators=["pdwis"]).estimates["pdwis"].value
        for p in ps
    ]
    assert values == sorted(values)
    assert values[-1] - values[0] > 0.5


def test_on_policy_weights_are_one_and_ess_is_the_episode_count(logs: DomainArrays) -> None:
    report = evaluate_policy(logs, RightProb(0.5), rng=np.random.default_rng(0), estimators=["ips", "snips"])
    assert report.estimates["ips"].ess == pytest.approx(logs.n_episodes)
    assert report.estimates["ips"].value == pytest.approx(report.behaviour_value)
    # A policy far from the logged one leaves few effective episodes.
    far = evaluate_policy(logs, RightProb(0.95), rng=np.random.default_rng(0), estimators=["ips"])
    assert far.estimates["ips"].ess < 0.2 * logs.n_episodes


def test_missing_propensities_give_a_clear_error_and_the_model_estimators_still_run(logs: DomainArrays) -> None:
    unlogged = DomainArrays(**{**logs.__dict__, "propensities": np.full(logs.n_steps, np.nan, np.float32)})
    with pytest.raises(OPEError, match="propensit.*'fqe' or 'mb'"):
        evaluate_policy(unlogged, RightProb(0.8), rng=np.random.default_rng(0), estimators=["snips"])
    report = evaluate_policy(unlogged, RightProb(0.8), rng=np.random.default_rng(0), fqe=FAST_FQE, model=FAST_MODEL)
    assert list(report.estimates) == ["fqe", "mb"]
    assert set(report.skipped) == {"ips", "snips", "pdwis", "dr", "wdr"}
    for name in ("fqe", "mb"):
        assert abs(report.estimates[name].value - true_value(0.8)) < TOLERANCE.get(name, 0.06), name


def unlogged_episodes(logs: DomainArrays, episodes: np.ndarray) -> DomainArrays:
    """``logs`` with the propensities of ``episodes`` missing (as a ratings file ingested beside impressions)."""
    props = logs.propensities.copy()
    for e in episodes:
        props[logs.episode_starts[e] : logs.episode_ends[e]] = np.nan
    return DomainArrays(**{**logs.__dict__, "propensities": props})


def test_importance_sampling_weighs_the_episodes_that_have_propensities(logs: DomainArrays) -> None:
    unlogged = np.arange(0, logs.n_episodes, 3)  # a third of the episodes
    mixed = unlogged_episodes(logs, unlogged)
    assert mixed.propensity_episodes.sum() == logs.n_episodes - len(unlogged)
    assert mixed.propensity_episodes[unlogged].sum() == 0
    estimators = ["ips", "snips", "pdwis", "dr", "wdr", "fqe"]
    report = evaluate_policy(mixed, RightProb(0.8), rng=np.random.default_rng(0), estimators=estimators, fqe=FAST_FQE)
    kept = np.flatnonzero(mixed.propensity_episodes)
    assert report.propensity_episodes == len(kept) and report.n_episodes == logs.n_episodes
    for name in ("ips", "snips", "pdwis", "dr", "wdr"):
        assert report.estimates[name].n_episodes == len(kept), name
        assert abs(report.estimates[name].value - true_value(0.8)) < 0.06, name
    assert report.estimates["fqe"].n_episodes == logs.n_episodes
    # The weighted estimates are exactly those of the episodes with propensities alone.
    alone = evaluate_policy(
        logs.select_episodes(kept), RightProb(0.8), rng=np.random.default_rng(0), estimators=["ips", "snips", "pdwis"]
    )
    for name in ("ips", "snips", "pdwis"):
        assert report.estimates[name].value == pytest.approx(alone.estimates[name].value), name
    assert report.behaviour_value != pytest.approx(alone.behaviour_value)  # the logged value reads every episode


def test_an_evaluated_subset_without_propensities_skips_or_names_the_weighted_estimators(logs: DomainArrays) -> None:
    mixed = unlogged_episodes(logs, np.arange(1, logs.n_episodes))  # only episode 0 has propensities
    assert supported_estimators(mixed, RightProb(0.8))[0][:2] == ["ips", "snips"]
    # Two episodes drawn at random almost surely miss episode 0: the weighted estimators are skipped, saying why.
    report = evaluate_policy(
        mixed, RightProb(0.8), rng=np.random.default_rng(0), max_episodes=2, fqe=FAST_FQE, model=FAST_MODEL
    )
    assert report.propensity_episodes == 0
    assert set(report.estimates) == {"fqe", "mb"}
    assert "none of the 2 evaluated episodes" in report.skipped["snips"]
    with pytest.raises(OPEError, match=r"snips: none of the 2 evaluated episodes.*'fqe' or 'mb'"):
        evaluate_policy(mixed, RightProb(0.8), rng=np.random.default_rng(0), max_episodes=2, estimators=["snips"])


def test_importance_sampling_is_the_default_estimator_where_most_episodes_have_propensities(
    logs: DomainArrays,
) -> None:
    assert weighs_by_default(logs)
    half = logs.n_episodes // 2
    assert weighs_by_default(unlogged_episodes(logs, np.arange(half)))  # exactly half still have them
    assert not weighs_by_default(unlogged_episodes(logs, np.arange(half + 1)))


def test_the_domain_spec_names_the_default_estimator_where_the_logs_support_it(logs: DomainArrays) -> None:
    def declaring(arrays: DomainArrays, name: str | None) -> DomainArrays:
        return dataclasses.replace(arrays, spec=dataclasses.replace(SPEC, ope_estimator=name))

    unlogged = unlogged_episodes(logs, np.arange(logs.n_episodes))
    assert default_estimator(logs) == "snips" and default_estimator(unlogged) == "fqe"
    assert default_estimator(declaring(logs, "mb")) == "mb"
    assert default_estimator(declaring(unlogged, "mb")) == "mb"  # the model needs no propensities
    assert default_estimator(declaring(logs, "pdwis")) == "pdwis"
    assert default_estimator(declaring(unlogged, "pdwis")) == "fqe"  # it would: the logs' own default instead


def test_bootstrap_is_reproducible_with_the_same_generator(logs: DomainArrays) -> None:
    inputs = OPEInputs(
        rewards=logs.rewards.astype(np.float64),
        episode_starts=logs.episode_starts,
        episode_ends=logs.episode_ends,
        target_logp=RightProb(0.7).log_prob(logs.states, logs.actions).astype(np.float64),
        behaviour_p=logs.propensities.astype(np.float64),
    )
    a = estimate("snips", inputs, rng=np.random.default_rng(5))
    b = estimate("snips", inputs, rng=np.random.default_rng(5))
    c = estimate("snips", inputs, rng=np.random.default_rng(6))
    assert a == b
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    wide = estimate("snips", inputs, rng=np.random.default_rng(5), confidence=0.99)
    assert wide.ci_high - wide.ci_low > a.ci_high - a.ci_low


def test_goal_task_scores_success_within_the_horizon(logs: DomainArrays) -> None:
    task = goal_task(logs, np.array([4.0], np.float32), np.array([True]), name="end")
    report = evaluate_policy(logs, RightProb(0.8), rng=np.random.default_rng(3), task=task, estimators=["pdwis"])
    assert abs(report.estimates["pdwis"].value - true_value(0.8)) < 0.06
    # A goal the chain never reaches has value 0 for every policy.
    never = goal_task(logs, np.array([9.0], np.float32), np.array([True]))
    assert (
        evaluate_policy(logs, RightProb(0.8), rng=np.random.default_rng(3), task=never, estimators=["snips"])
        .estimates["snips"]
        .value
        == 0.0
    )


def test_fqe_keeps_a_goal_tasks_success_rate_within_0_and_1(logs: DomainArrays) -> None:
    """Near-certain success: unbounded, FQE's extrapolation gave 1.019 for a success rate (truth 0.996)."""
    task = goal_task(logs, np.array([4.0], np.float32), np.array([True]), name="end")
    report = evaluate_policy(logs, RightProb(0.95), rng=np.random.default_rng(0), task=task, estimators=["fqe", "dr"],
                             fqe=FAST_FQE)  # fmt: skip
    fqe = report.estimates["fqe"]
    assert 0.0 <= fqe.value <= 1.0 and abs(fqe.value - true_value(0.95)) < 0.03
    assert report.estimates["dr"].value == pytest.approx(true_value(0.95), abs=0.06)


def test_mixture_and_uniform_policies_have_consistent_probabilities(logs: DomainArrays) -> None:
    mix = MixturePolicy([RightProb(1.0), UniformPolicy(SPEC)], [0.6, 0.4])
    p = mix.probs(logs.states[:5])
    np.testing.assert_allclose(p[:, 1], 0.6 + 0.4 * 0.5)
    actions, probs = mix.sample(logs.states[:2000], None, np.random.default_rng(0))
    assert abs(actions.mean() - 0.8) < 0.03
    np.testing.assert_allclose(probs, np.where(actions == 1, 0.8, 0.2), rtol=1e-6)


def test_invalid_inputs_name_the_problem(logs: DomainArrays) -> None:
    with pytest.raises(OPEError, match="unknown estimator"):
        evaluate_policy(logs, RightProb(0.5), rng=np.random.default_rng(0), estimators=["magic"])
    with pytest.raises(OPEError, match="gamma"):
        OPEInputs(rewards=np.zeros(2), episode_starts=np.array([0]), episode_ends=np.array([2]), gamma=1.5)
    with pytest.raises(OPEError, match="step row 1"):
        OPEInputs(rewards=np.array([0.0, np.nan]), episode_starts=np.array([0]), episode_ends=np.array([2]))


def test_fqe_refits_give_an_interval_that_reflects_model_uncertainty(logs: DomainArrays) -> None:
    small = simulate(0.5, 300, np.random.default_rng(4))
    cfg = FQEConfig(hidden=(32, 32), steps=600, batch_size=128, learning_rate=3e-3, tau=0.05)
    single = evaluate_policy(small, RightProb(0.8), rng=np.random.default_rng(0), estimators=["fqe"], fqe=cfg)
    e = single.estimates["fqe"]
    assert e.ci_high - e.ci_low < 1e-6  # every episode starts in the same state: one model has no spread
    refit = evaluate_policy(
        small, RightProb(0.8), rng=np.random.default_rng(0), estimators=["fqe"], fqe=cfg, fqe_refits=4
    ).estimates["fqe"]
    assert refit.ci_high - refit.ci_low > 1e-3
    assert refit.ci_low <= refit.value <= refit.ci_high


def test_a_paired_comparison_finds_a_worse_policy_that_the_two_intervals_overlap_on() -> None:
    """On 40 draws of 300 logged episodes, a policy 0.032 (13%) worse than the baseline is found worse by the
    paired interval every time; one policy's interval against the other's value found it in 3 draws of 40."""
    truth = true_value(0.48) - true_value(0.5)
    found, overlapped, covered = 0, 0, 0
    for k in range(40):
        small = simulate(0.5, 300, np.random.default_rng(100 + k))
        d = compare_policies(small, RightProb(0.48), RightProb(0.5), estimator="snips", rng=np.random.default_rng(k))
        assert d.value == pytest.approx(d.policy.value - d.baseline.value)
        found += d.worse
        overlapped += d.policy.ci_high >= d.baseline.value
        covered += d.ci_low <= truth <= d.ci_high
    assert found == 40
    assert overlapped >= 30
    assert covered >= 32  # the 90% interval covers the true difference (36 of 40 measured)


def test_a_paired_comparison_agrees_with_the_separate_estimates_and_is_zero_against_itself(logs: DomainArrays) -> None:
    d = compare_policies(logs, RightProb(0.6), RightProb(0.5), estimator="pdwis", rng=np.random.default_rng(0))
    alone = evaluate_policy(logs, RightProb(0.6), rng=np.random.default_rng(0), estimators=["pdwis"])
    assert d.policy.value == pytest.approx(alone.estimates["pdwis"].value)
    assert d.ci_low > 0.0 and not d.worse and d.share_worse == 0.0
    assert abs(d.value - (true_value(0.6) - true_value(0.5))) < 0.03
    same = compare_policies(logs, RightProb(0.6), RightProb(0.6), estimator="snips", rng=np.random.default_rng(0))
    assert (same.value, same.ci_low, same.ci_high, same.share_worse) == (0.0, 0.0, 0.0, 0.0)
    assert set(d.to_dict()) >= {"value", "ci_low", "ci_high", "share_worse", "policy", "baseline"}
    assert d.verdict(10.0) == "better" and same.verdict(10.0) == "no clear difference"
    worse = compare_policies(logs, RightProb(0.5), RightProb(0.6), estimator="pdwis", rng=np.random.default_rng(0))
    assert worse.verdict(10.0) == "worse" and worse.verdict(worse.policy.ess + 1) == "not evaluable"


def test_a_paired_comparison_runs_the_model_estimators_and_weighs_only_logged_episodes(logs: DomainArrays) -> None:
    d = compare_policies(
        logs, RightProb(0.8), RightProb(0.3), estimator="fqe", rng=np.random.default_rng(0), fqe=FAST_FQE
    )
    assert abs(d.value - (true_value(0.8) - true_value(0.3))) < 0.1 and d.ci_low > 0.0
    mixed = unlogged_episodes(logs, np.arange(1000))
    w = compare_policies(mixed, RightProb(0.8), RightProb(0.3), estimator="snips", rng=np.random.default_rng(0))
    assert w.policy.n_episodes == logs.n_episodes - 1000
    assert abs(w.value - (true_value(0.8) - true_value(0.3))) < 0.1


def test_float_round_off_between_two_policies_is_no_difference() -> None:
    """Both policies reach the goal in every episode; their estimates differ only in the last bits."""
    ends = np.arange(1, 51) * 2
    v0 = np.ones(50)
    one = OPEInputs(rewards=np.zeros(100), episode_starts=ends - 2, episode_ends=ends, v0=v0)
    other = OPEInputs(rewards=np.zeros(100), episode_starts=ends - 2, episode_ends=ends, v0=v0 * (1 + 1e-15))
    d = compare("fqe", one, other, rng=np.random.default_rng(0))
    assert (d.value, d.ci_low, d.ci_high, d.share_worse) == (0.0, 0.0, 0.0, 0.0) and not d.worse
    real = OPEInputs(rewards=np.zeros(100), episode_starts=ends - 2, episode_ends=ends, v0=v0 * (1 - 1e-6))
    assert compare("fqe", real, one, rng=np.random.default_rng(0)).worse  # a real difference, however small, is not


def member_inputs(model_v0: np.ndarray) -> OPEInputs:
    """One-step episodes whose model values are ``model_v0``: (E,) or (E, members)."""
    ends = np.arange(1, len(model_v0) + 1)
    return OPEInputs(rewards=np.zeros(len(ends)), episode_starts=ends - 1, episode_ends=ends, model_v0=model_v0)


def test_model_values_per_member_widen_the_interval_where_the_members_disagree() -> None:
    episodes = np.random.default_rng(0).normal(0.0, 1.0, (400, 1))
    spread = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])  # each member's own level, common to every episode
    one = estimate("mb", member_inputs(episodes[:, 0]), rng=np.random.default_rng(1))
    agree = estimate("mb", member_inputs(np.repeat(episodes, 5, axis=1)), rng=np.random.default_rng(1))
    disagree = estimate("mb", member_inputs(episodes + spread), rng=np.random.default_rng(1))
    assert one.value == pytest.approx(agree.value) and disagree.value == pytest.approx(agree.value)
    width = one.ci_high - one.ci_low
    assert agree.ci_high - agree.ci_low == pytest.approx(width, rel=0.3)  # members add nothing where they agree
    assert disagree.ci_high - disagree.ci_low > 5 * width
    # Rollout noise makes the members' means differ too; it is already in the episodes' means over the members,
    # so it does not count twice (resampling members and episodes together widens this interval 1.6 times).
    rng = np.random.default_rng(2)
    noisy = 0.2 * episodes + rng.normal(0.0, 2.0, (400, 5))
    alone = estimate("mb", member_inputs(noisy.mean(axis=1)), rng=np.random.default_rng(1))
    both = estimate("mb", member_inputs(noisy), rng=np.random.default_rng(1))
    assert both.ci_high - both.ci_low < 1.25 * (alone.ci_high - alone.ci_low)


def test_a_paired_comparison_resamples_the_same_members_for_both_policies() -> None:
    episodes = np.random.default_rng(0).normal(0.0, 1.0, (400, 1))
    level = episodes + np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    # The members disagree on both values but agree that the candidate is 0.1 better: a clear difference.
    agreed = compare("mb", member_inputs(level + 0.1), member_inputs(level), rng=np.random.default_rng(1))
    assert agreed.value == pytest.approx(0.1) and agreed.ci_low > 0.0
    # Here they disagree on the difference itself (0.1 on average): the interval takes in 0.
    split = level + np.array([-0.4, -0.2, 0.1, 0.4, 0.6])
    disputed = compare("mb", member_inputs(split), member_inputs(level), rng=np.random.default_rng(1))
    assert disputed.value == pytest.approx(0.1) and disputed.ci_low < 0.0 < disputed.ci_high
    with pytest.raises(OPEError, match="same ensemble"):
        compare("mb", member_inputs(level[:, :3]), member_inputs(level), rng=np.random.default_rng(1))
    with pytest.raises(OPEError, match=r"per episode and ensemble member \(400, members\)"):
        estimate("mb", dataclasses.replace(member_inputs(level), model_v0=level[:10]), rng=np.random.default_rng(1))


def test_a_paired_comparison_refuses_what_it_cannot_compare(logs: DomainArrays) -> None:
    with pytest.raises(OPEError, match=r"unknown estimator\(s\) \['magic'\]"):
        compare_policies(logs, RightProb(0.6), RightProb(0.5), estimator="magic", rng=np.random.default_rng(0))
    bare = unlogged_episodes(logs, np.arange(logs.n_episodes))
    with pytest.raises(OPEError, match="needs a positive logged propensity on every step"):
        compare_policies(bare, RightProb(0.6), RightProb(0.5), estimator="snips", rng=np.random.default_rng(0))
    one = OPEInputs(rewards=np.zeros(4), episode_starts=np.array([0, 2]), episode_ends=np.array([2, 4]), v0=np.zeros(2))
    other = OPEInputs(rewards=np.zeros(4), episode_starts=np.array([0]), episode_ends=np.array([4]), v0=np.zeros(1))
    with pytest.raises(OPEError, match="same episodes"):
        compare("fqe", one, other, rng=np.random.default_rng(0))


def test_candidates_evaluated_on_the_same_tasks_share_one_model_fit(logs: DomainArrays) -> None:
    models: dict = {}
    task = reward_task(logs)

    def run(p: float) -> Estimate:
        (report,) = evaluate_tasks(
            logs,
            [(RightProb(p), task)],
            rng=np.random.default_rng(3),
            estimators=["mb"],
            model=FAST_MODEL,
            models=models,
        )
        return report.estimates["mb"]

    first = run(0.8)
    (fitted,) = models.values()
    other = run(0.2)
    assert list(models.values()) == [fitted] and models[task.description] is fitted  # not fitted again
    assert run(0.8) == first  # the same model and, from an equal seed, the same draws
    assert other.value < first.value  # going right more often reaches the rewarded end of the chain more often


def test_the_effective_sample_size_does_not_depend_on_the_weights_scale() -> None:
    from decision_core.ope.estimators import _ess

    weights = np.array([3.0, 1.0, 0.0, 1.0])
    assert _ess(weights) == pytest.approx(25 / 11)
    # Weights of a policy far from the logs: their squares underflow, yet they are the same weights.
    assert _ess(weights * 1e-200) == pytest.approx(25 / 11)
    assert _ess(np.zeros(4)) == 0.0 and _ess(np.zeros(0)) == 0.0
