"""OPE evaluates exactly the policy an agent serves: its probabilities match the propensities act() reports."""

from __future__ import annotations

import numpy as np
import pytest

from decision_core.algos import Exploration, create_agent
from decision_core.ope import AgentPolicy, OPEError, UniformPolicy
from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature


def _spec(actions: DiscreteActions | BoxActions) -> DomainSpec:
    return DomainSpec(
        name="toy",
        version="1",
        state=(Feature("a"), Feature("b")),
        outcomes=(OutcomeFeature("a", tolerance=0.1),),
        actions=actions,
    )


STATES = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)


@pytest.mark.parametrize(
    "exploration",
    [None, Exploration(epsilon=0.3), Exploration(temperature=0.5), Exploration(epsilon=0.2, temperature=2.0)],
)
def test_discrete_probabilities_match_served_propensities(exploration: Exploration | None) -> None:
    agent = create_agent("bc", _spec(DiscreteActions(("a", "b", "c"))), config={"hidden_dims": [8]}, seed=3)
    policy = AgentPolicy(agent, exploration)
    probs = policy.probs(STATES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    served = agent.act(STATES, exploration=exploration, rng=np.random.default_rng(1))
    np.testing.assert_allclose(probs[np.arange(len(STATES)), served.actions], served.propensities, rtol=1e-5)
    if exploration is None:
        assert set(np.unique(probs)) <= {0.0, 1.0}


def test_masked_actions_get_no_probability() -> None:
    agent = create_agent("bc", _spec(DiscreteActions(("a", "b", "c"), masked=True)), config={"hidden_dims": [8]})
    mask = np.tile([True, False, True], (len(STATES), 1))
    probs = AgentPolicy(agent, Exploration(epsilon=0.5, temperature=1.0)).probs(STATES, mask)
    assert np.all(probs[:, 1] == 0.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("exploration", [Exploration(temperature=1.0), Exploration(epsilon=0.25, temperature=0.5)])
def test_continuous_densities_match_served_propensities(exploration: Exploration) -> None:
    spec = _spec(BoxActions(("u", "v"), (-1.0, 0.0), (1.0, 2.0)))
    agent = create_agent("bc", spec, config={"hidden_dims": [8]}, seed=2)
    served = agent.act(STATES, exploration=exploration, rng=np.random.default_rng(4))
    logp = AgentPolicy(agent, exploration).log_prob(STATES, served.actions)
    np.testing.assert_allclose(np.exp(logp), served.propensities, rtol=1e-3)
    with pytest.raises(OPEError, match="deterministic over continuous actions"):
        AgentPolicy(agent).log_prob(STATES, served.actions)
    uniform = UniformPolicy(spec).log_prob(STATES, served.actions)
    np.testing.assert_allclose(uniform, -np.log(4.0), rtol=1e-6)


def test_goal_conditioned_agents_need_a_goal() -> None:
    agent = create_agent("gcbc", _spec(DiscreteActions(("a", "b"))), config={"hidden_dims": [8]})
    with pytest.raises(OPEError, match="goal-conditioned"):
        AgentPolicy(agent)
    policy = AgentPolicy(agent, goal=np.array([1.0], np.float32), goal_mask=np.array([True]))
    assert policy.probs(STATES).shape == (len(STATES), 2)
