"""The numpy copy of a served policy makes the same decisions, with the same propensities, as the torch agent."""

from __future__ import annotations

import numpy as np
import pytest

from decision_core.algos import Exploration, create_agent
from decision_core.algos.nets import UNSUPPORTED_GAP
from decision_core.data.dataset import FeatureStats
from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature
from serving.forward import TOLERANCE, export_policy


def _spec(actions: DiscreteActions | BoxActions) -> DomainSpec:
    return DomainSpec(
        name="probe",
        version="1",
        state=(Feature("a"), Feature("b"), Feature("c"), Feature("d")),
        outcomes=(OutcomeFeature("a", tolerance=0.1), OutcomeFeature("c", tolerance=0.1)),
        actions=actions,
        reward="next.a",
    )


DISCRETE = _spec(DiscreteActions(labels=("w", "x", "y", "z", "v"), masked=True))
CONTINUOUS = _spec(BoxActions(names=("u", "v"), low=(-2.0, 0.0), high=(1.0, 5.0)))
EXPLORATIONS = [
    None,
    Exploration(epsilon=0.2),
    Exploration(epsilon=0.0, temperature=0.7),
    Exploration(epsilon=0.3, temperature=2.0),
    Exploration(epsilon=1.0),
]


def _agent(algo: str, spec: DomainSpec, seed: int = 3):
    rng = np.random.default_rng(seed)
    data = (rng.normal(size=(500, spec.state_dim)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 50.0, -1.0, 2.0]).astype(np.float32)
    config: dict[str, object] = {"hidden_dims": [32, 32], "batch_size": 8}
    if algo in ("gcbc", "bc"):
        config["layer_norm"] = True
    return create_agent(algo, spec, FeatureStats.compute(data, spec), config, seed=seed), data


def _inputs(spec: DomainSpec, data: np.ndarray, rng: np.random.Generator, b: int):
    states = data[rng.integers(0, len(data), b)]
    goals = states[:, [0, 2]] + rng.normal(size=(b, 2)).astype(np.float32)
    goals[rng.random((b, 2)) < 0.3] = np.nan
    mask = None
    if spec.discrete:
        mask = rng.random((b, spec.n_actions)) < 0.7
        mask[np.arange(b), rng.integers(0, spec.n_actions, b)] = True
    return states, goals, mask


@pytest.mark.parametrize("algo", ["gcbc", "bc", "gciql", "crl", "iql", "cql", "qrl"])
@pytest.mark.parametrize("spec", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_numpy_policy_decides_exactly_like_the_agent(algo: str, spec: DomainSpec) -> None:
    agent, data = _agent(algo, spec)
    policy = export_policy(agent)
    assert policy is not None
    rng = np.random.default_rng(11)
    for exploration in EXPLORATIONS:
        if not spec.discrete and exploration is not None:
            # Sampled continuous actions' densities are ill-conditioned in float32 near the bounds (atanh of
            # values near +-1): the copy declines them and they stay with torch.
            assert not policy.handles(exploration)
            continue
        assert policy.handles(exploration)
        for b in (1, 7, 300):
            states, goals, mask = _inputs(spec, data, rng, b)
            g = goals if agent.goal_conditioned else None
            for action_mask in (None, mask):
                want = agent.act(states, g, None, action_mask, exploration=exploration, rng=np.random.default_rng(5))
                got = policy.act(states, g, None, action_mask, exploration=exploration, rng=np.random.default_rng(5))
                assert got.actions.dtype == want.actions.dtype and got.actions.shape == want.actions.shape
                if spec.discrete:
                    assert np.array_equal(got.actions, want.actions)
                else:
                    np.testing.assert_allclose(got.actions, want.actions, rtol=TOLERANCE, atol=TOLERANCE)
                np.testing.assert_allclose(got.propensities, want.propensities, rtol=TOLERANCE, atol=TOLERANCE)


def test_hierarchical_policies_are_served_through_torch() -> None:
    agent, _ = _agent("hiql", DISCRETE)
    assert export_policy(agent) is None


def test_discrete_cql_of_the_critics_alone_is_served_through_torch() -> None:
    data = np.random.default_rng(3).normal(size=(500, DISCRETE.state_dim)).astype(np.float32)
    config = {"hidden_dims": [32, 32], "batch_size": 8, "extraction": "q"}
    agent = create_agent("cql", DISCRETE, FeatureStats.compute(data, DISCRETE), config, seed=4)
    assert export_policy(agent) is None


@pytest.mark.parametrize("algo", ["gcbc", "bc", "iql", "gciql", "qrl"])
@pytest.mark.parametrize("spec", [DISCRETE, CONTINUOUS], ids=["discrete", "continuous"])
def test_one_decision_path_matches_the_batch_path(algo: str, spec: DomainSpec) -> None:
    """act_one (the service's single-request path) returns what act returns for that row, bit for bit, from the
    same random draws: partial goals, no goal, action masks and every exploration setting."""
    agent, data = _agent(algo, spec)
    policy = export_policy(agent)
    assert policy is not None
    rng = np.random.default_rng(13)
    for exploration in EXPLORATIONS:
        if not policy.handles(exploration):
            continue
        states, goals, mask = _inputs(spec, data, rng, 40)
        goals[0] = np.nan  # a goal that names no feature
        for i in range(len(states)):
            g = goals[i] if agent.goal_conditioned else None
            for row_mask in (None, mask[i] if mask is not None else None):
                want = policy.act(
                    states[i : i + 1],
                    None if g is None else g[None],
                    None,
                    None if row_mask is None else row_mask[None],
                    exploration=exploration,
                    rng=np.random.default_rng(i),
                )
                action, propensity = policy.act_one(
                    states[i].tolist(),
                    None if g is None else g.tolist(),
                    None if row_mask is None else row_mask.tolist(),
                    exploration=exploration,
                    rng=np.random.default_rng(i),
                )
                assert action.dtype == np.float32 and action.shape == (spec.action_dim,)
                assert np.array_equal(action, np.asarray(want.actions, np.float32).reshape(-1))
                assert propensity == float(want.propensities[0])


@pytest.mark.parametrize("algo", ["iql", "gciql", "cql"])
def test_the_support_threshold_of_closed_form_policies_is_mirrored(algo: str) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(500, DISCRETE.state_dim)).astype(np.float32)
    config = {"hidden_dims": [32, 32], "batch_size": 8, "support": 0.97}
    agent = create_agent(algo, DISCRETE, FeatureStats.compute(data, DISCRETE), config, seed=4)
    policy = export_policy(agent)
    assert policy is not None and policy.tilt is not None and policy.tilt.log_support is not None
    states, goals, mask = _inputs(DISCRETE, data, rng, 300)
    g = goals if agent.goal_conditioned else None
    main, _ = policy.head(states, g, None)
    unsupported = main <= -UNSUPPORTED_GAP / 2
    assert unsupported.any(axis=1).mean() > 0.5  # most rows drop some action below the threshold
    # Masks as callers send them, and masks that leave only actions outside the support.
    rows = unsupported.any(axis=1)
    cases = ((states, g, mask), (states[rows], None if g is None else g[rows], unsupported[rows]))
    for s, goal, allowed in cases:
        for exploration in EXPLORATIONS:
            want = agent.act(s, goal, None, allowed, exploration=exploration, rng=np.random.default_rng(5))
            got = policy.act(s, goal, None, allowed, exploration=exploration, rng=np.random.default_rng(5))
            assert np.array_equal(got.actions, want.actions)
            assert allowed[np.arange(len(s)), got.actions].all()
            np.testing.assert_allclose(got.propensities, want.propensities, rtol=TOLERANCE, atol=TOLERANCE)
