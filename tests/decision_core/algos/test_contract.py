"""The agent contract, checked for every registered algorithm on discrete and continuous actions."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist

from decision_core.algos import ALGORITHMS, Agent, Exploration, create_agent, load_agent
from decision_core.algos.nets import PolicyDistribution, PolicyOutput
from decision_core.data import OfflineDataset
from decision_core.data.synthetic import grid_arrays, grid_available
from decision_core.errors import SpecError
from decision_core.registry import import_dotted
from decision_core.training.distributed import data_parallel, release

TINY = {"batch_size": 32, "hidden_dims": [32, 32]}


def _algorithm(name: str) -> type[Agent]:
    target = ALGORITHMS._targets[name]
    if isinstance(target, str):
        module = target.partition(":")[0]
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"algorithm '{name}' is registered but its module {module} is not in this checkout")
        import_dotted(target)
    return ALGORITHMS.get(name)


@pytest.fixture(scope="module", params=["discrete", "continuous"])
def data(request: pytest.FixtureRequest) -> tuple[OfflineDataset, object]:
    discrete = request.param == "discrete"
    arrays = grid_arrays(32, 12, discrete=discrete, masked=discrete, seed=3)
    return OfflineDataset(arrays), arrays


def _trained(name: str, ds: OfflineDataset, seed: int = 0, updates: int = 3) -> tuple[Agent, list[dict]]:
    _algorithm(name)
    agent = create_agent(name, ds.spec, ds.stats, config=TINY, seed=seed)
    sampler = agent.sampler(ds, seed=seed)
    metrics = [agent.update(sampler.sample(agent.config.batch_size)) for _ in range(updates)]
    return agent, metrics


def _inputs(ds: OfflineDataset, arrays, n: int = 16):
    rng = np.random.default_rng(0)
    rows = rng.choice(ds.n, n, replace=False)
    states = arrays.states[rows]
    goals = rng.integers(0, 5, (n, 2)).astype(np.float32)
    goal_mask = np.ones((n, 2), np.bool_)
    goal_mask[: n // 2, 1] = False
    action_mask = grid_available(states[:, :2], 5) if ds.spec.discrete else None
    return states, goals, goal_mask, action_mask, arrays.actions[rows]


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_updates_give_finite_namespaced_metrics(name: str, data) -> None:
    ds, _ = data
    agent, metrics = _trained(name, ds)
    assert agent.n_updates == 3
    for m in metrics:
        assert m, f"{name} returned no metrics"
        for key, value in m.items():
            assert "/" in key, f"{name}: metric '{key}' is not namespaced"
            assert math.isfinite(value), f"{name}: metric {key} = {value}"


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_act_respects_spaces_and_reports_propensities(name: str, data) -> None:
    ds, arrays = data
    agent, _ = _trained(name, ds)
    states, goals, goal_mask, action_mask, _ = _inputs(ds, arrays)
    rng = np.random.default_rng(1)
    spec = ds.spec
    for g, m in ((goals, goal_mask), (None, None)):
        for exploration in (None, Exploration(epsilon=0.2), Exploration(epsilon=0.1, temperature=1.0)):
            res = agent.act(states, g, m, action_mask, exploration=exploration, rng=rng)
            assert res.propensities.shape == (16,) and res.propensities.dtype == np.float32
            assert np.all(np.isfinite(res.propensities)) and np.all(res.propensities > 0)
            if spec.discrete:
                assert res.actions.shape == (16,) and res.actions.dtype == np.int64
                assert np.all(action_mask[np.arange(16), res.actions]), "a masked action was chosen"
                assert np.all(res.propensities <= 1.0 + 1e-6)
                if exploration is None:
                    assert np.all(res.propensities == 1.0)
            else:
                assert res.actions.shape == (16, 2) and res.actions.dtype == np.float32
                assert np.all(res.actions >= -1.0) and np.all(res.actions <= 1.0)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_propensity_of_a_sampled_action_is_its_policy_probability(name: str, data) -> None:
    ds, arrays = data
    agent, _ = _trained(name, ds)
    states, goals, goal_mask, action_mask, logged = _inputs(ds, arrays)
    res = agent.act(
        states, goals, goal_mask, action_mask, exploration=Exploration(temperature=1.0), rng=np.random.default_rng(2)
    )
    log_p = agent.log_prob(states, goals, goal_mask, res.actions, action_mask)
    assert log_p.shape == (16,) and np.all(np.isfinite(log_p))
    np.testing.assert_allclose(np.exp(log_p), res.propensities, rtol=2e-3, atol=1e-6)
    actions = logged[:, 0].astype(np.int64) if ds.spec.discrete else logged
    if ds.spec.discrete:
        probs = agent.action_probs(states, goals, goal_mask, action_mask)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
        assert np.all(probs[~action_mask] == 0.0), "masked actions must have probability 0"
        np.testing.assert_allclose(np.exp(log_p), probs[np.arange(16), res.actions], rtol=1e-4)
    assert np.all(np.isfinite(agent.log_prob(states, goals, goal_mask, actions)))
    # A cooler served policy: its propensities are the tempered policy's probabilities, which log_prob reports.
    cool = agent.act(
        states, goals, goal_mask, action_mask, exploration=Exploration(temperature=0.5), rng=np.random.default_rng(3)
    )
    log_cool = agent.log_prob(states, goals, goal_mask, cool.actions, action_mask, temperature=0.5)
    np.testing.assert_allclose(np.exp(log_cool), cool.propensities, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_save_load_round_trip_gives_identical_actions(name: str, data, tmp_path) -> None:
    ds, arrays = data
    agent, _ = _trained(name, ds)
    states, goals, goal_mask, action_mask, logged = _inputs(ds, arrays)
    agent.save(tmp_path / "agent")
    meta = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert meta["algo"] == name and meta["spec"]["name"] == ds.spec.name
    loaded = load_agent(tmp_path / "agent")
    assert type(loaded) is type(agent) and loaded.config == agent.config and loaded.stats == agent.stats
    for g, m in ((goals, goal_mask), (None, None)):
        a = agent.act(states, g, m, action_mask, rng=np.random.default_rng(0))
        b = loaded.act(states, g, m, action_mask, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(a.actions, b.actions)
    actions = logged[:, 0].astype(np.int64) if ds.spec.discrete else logged
    np.testing.assert_array_equal(
        agent.log_prob(states, goals, goal_mask, actions), loaded.log_prob(states, goals, goal_mask, actions)
    )
    # Training continues from the saved optimiser state identically.
    s1 = agent.sampler(ds, seed=9)
    s2 = loaded.sampler(ds, seed=9)
    m1 = agent.update(s1.sample(32))
    m2 = loaded.update(s2.sample(32))
    assert m1 == pytest.approx(m2, rel=1e-5)


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_seeded_training_repeats_exactly(name: str, data) -> None:
    ds, _ = data
    _, ma = _trained(name, ds, seed=5)
    _, mb = _trained(name, ds, seed=5)
    assert ma == mb
    _, mc = _trained(name, ds, seed=6)
    assert ma != mc


@pytest.fixture(scope="module")
def process_group():
    """A one-process gloo group: DDP's reducer runs exactly as on many ranks, averaging over one."""
    if dist.is_initialized():
        pytest.skip("a process group is already open in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_updates_under_ddp_equal_plain_updates(name: str, data, process_group) -> None:
    # Every optimiser's parameters get a gradient at every step (else DDP's reducer fails on the next one),
    # and the averaged update over one rank is the plain update.
    ds, _ = data
    plain, metrics = _trained(name, ds, seed=2, updates=3)
    _algorithm(name)
    wrapped = create_agent(name, ds.spec, ds.stats, config=TINY, seed=2)
    sampler = wrapped.sampler(ds, seed=2)
    data_parallel(wrapped)
    assert set(wrapped.data_parallel) == set(wrapped.optimizers)
    wrapped_metrics = [wrapped.update(sampler.sample(32)) for _ in range(3)]
    release(wrapped)
    for got, expected in zip(wrapped_metrics, metrics, strict=True):
        assert got == pytest.approx(expected, rel=1e-5)
    for (key, a), b in zip(plain.nets.state_dict().items(), wrapped.nets.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), key


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_bf16_training_changes_the_arithmetic_not_the_parameters_or_acting(name: str, data) -> None:
    ds, arrays = data
    _, full_metrics = _trained(name, ds, seed=4)
    _algorithm(name)
    mixed = create_agent(name, ds.spec, ds.stats, config=TINY, seed=4).set_precision("bf16")
    sampler = mixed.sampler(ds, seed=4)
    mixed_metrics = [mixed.update(sampler.sample(32)) for _ in range(3)]
    assert all(math.isfinite(v) for m in mixed_metrics for v in m.values())
    # The gradient passes ran in bfloat16 (about 3 significant digits), so the losses differ a little...
    first = [k for k in full_metrics[0] if k.endswith("loss")]
    assert first and full_metrics[0] != mixed_metrics[0]
    assert [full_metrics[0][k] for k in first] == pytest.approx([mixed_metrics[0][k] for k in first], rel=0.1, abs=0.05)
    # ...while parameters and optimiser state stay float32 and acting is float32 whatever the training precision.
    assert all(p.dtype == torch.float32 for p in mixed.nets.parameters())
    states, goals, goal_mask, action_mask, _ = _inputs(ds, arrays)
    acted = mixed.act(states, goals, goal_mask, action_mask, rng=np.random.default_rng(0))
    mixed.set_precision("fp32")
    again = mixed.act(states, goals, goal_mask, action_mask, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(acted.actions, again.actions)
    np.testing.assert_array_equal(acted.propensities, again.propensities)
    with pytest.raises(SpecError, match="precision must be one of fp32, bf16"):
        mixed.set_precision("fp16")


@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_config_is_typed_validated_and_json_round_trips(name: str) -> None:
    cls = _algorithm(name)
    config = cls.config_class()
    assert cls.config_class.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="batch_size"):
        cls.config_class.from_dict({"batch_size": 0})
    with pytest.raises(SpecError, match="unknown fields"):
        cls.config_class.from_dict({"no_such_field": 1})
    with pytest.raises(ValueError, match="discount"):
        cls.config_class(discount=1.5)
    goals = getattr(config, "goals", None)
    if goals is not None:  # a partial goal mixture changes that field of this algorithm's own mixture
        changed = cls.config_class.from_dict({"goals": {"p_partial": 0.123}})
        assert changed.goals == replace(goals, p_partial=0.123)


def test_squashed_gaussian_density_integrates_to_one() -> None:
    from decision_core.data.synthetic import grid_spec

    dist = PolicyDistribution(grid_spec(discrete=False))
    out = PolicyOutput(mean=torch.tensor([[0.3, -1.2]]), log_std=torch.tensor([[-0.5, 0.4]]))
    g = torch.Generator().manual_seed(0)
    n = 400_000
    # Monte Carlo over the Box [-1, 1]^2 (area 4): E_uniform[p(a)] * 4 = 1.
    a = torch.rand(n, 2, generator=g) * 2 - 1
    p = dist.log_prob(PolicyOutput(mean=out.mean.expand(n, 2), log_std=out.log_std.expand(n, 2)), a).exp()
    assert float(p.mean() * 4) == pytest.approx(1.0, abs=0.02)


def test_unknown_algorithm_suggests_the_closest_name() -> None:
    from decision_core.errors import RegistryError

    with pytest.raises(RegistryError, match="Did you mean 'gciql'"):
        create_agent("gciq", grid_arrays(2, 3).spec)
