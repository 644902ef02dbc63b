"""The gymnasium envs over domain simulators: spaces, checker, seeding, goals, vectorised autoreset, ids."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from decision_core.envs.gym import SimulatorEnv, SimulatorVectorEnv, gym_id, register_envs
from decision_core.errors import SpecError


def _check(env: gymnasium.Env) -> None:
    with warnings.catch_warnings():
        # The spec gives no bounds for state features, so the observation Box is unbounded (a checker warning).
        warnings.filterwarnings("ignore", message=".*infinity.*")
        warnings.filterwarnings("ignore", message=".*symmetric and normalized space.*")
        check_env(env, skip_render_check=True)


def _run(env: gymnasium.Env, seed: int, steps: int) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    seen = [obs]
    for _ in range(steps):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        seen.append(obs)
        if term or trunc:
            obs, _ = env.reset()
            seen.append(obs)
    return seen


def test_line_env_spaces_follow_the_spec(line_sim) -> None:
    env = SimulatorEnv(line_sim)
    assert env.observation_space.shape == (2,) and env.observation_space.dtype == np.float32
    assert env.action_space == gymnasium.spaces.Discrete(3)
    cont = SimulatorEnv(line_sim, continuous=True)
    assert isinstance(cont.action_space, gymnasium.spaces.Box)
    assert cont.action_space.low.tolist() == [-1.0] and cont.action_space.high.tolist() == [1.0]


@pytest.mark.parametrize("continuous", [False, True])
def test_line_env_passes_the_gymnasium_checker_and_reproduces(line_sim, continuous: bool) -> None:
    _check(SimulatorEnv(line_sim, continuous=continuous))
    a = _run(SimulatorEnv(line_sim, continuous=continuous), seed=3, steps=60)
    b = _run(SimulatorEnv(line_sim, continuous=continuous), seed=3, steps=60)
    c = _run(SimulatorEnv(line_sim, continuous=continuous), seed=4, steps=60)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))


def test_episode_truncates_at_max_steps_and_terminates_on_falling(line_sim) -> None:
    env = SimulatorEnv(line_sim, max_episode_steps=5)
    env.reset(seed=0)
    ends = [env.step(1)[2:4] for _ in range(5)]
    assert ends[-1] == (False, True) and not any(any(e) for e in ends[:-1])
    env = SimulatorEnv(line_sim)
    env.reset(seed=0)
    for _ in range(20):
        _, reward, term, trunc, _ = env.step(2)
        if term:
            break
    assert term and not trunc and reward == -5.0


def test_goal_task_rewards_and_terminates_on_reaching_the_goal(line_sim) -> None:
    env = SimulatorEnv(line_sim, task="goal")
    obs, info = env.reset(seed=1, options={"goal": {"pos": 6.0}})
    assert info["goal_mask"].tolist() == [True] and info["goal"].tolist() == [6.0]
    rewards, success = [], False
    for _ in range(20):
        action = 2 if obs[0] < 6 else (0 if obs[0] > 6 else 1)
        obs, reward, term, _, info = env.step(action)
        rewards.append(reward)
        if term:
            success = info["is_success"]
            break
    assert success and rewards[-1] == 1.0 and sum(rewards[:-1]) == 0.0
    with pytest.raises(SpecError, match="no goal 'nowhere'.*home, edge"):
        env.reset(options={"goal": "nowhere"})
    obs, info = env.reset(seed=2)  # goal task without a goal: one of the domain's goals is drawn
    assert info["goal"].tolist() in ([5.0], [9.0])


def test_vector_env_matches_the_batched_dynamics_and_disables_autoreset_without_partial_reset(line_sim) -> None:
    venv = SimulatorVectorEnv(line_sim, 8)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    obs, info = venv.reset(seed=5)
    assert obs.shape == (8, 2) and venv.observation_space.contains(obs)
    assert info["is_success"].shape == (8,)
    dyn = line_sim.dynamics()
    ref_rng, _ = gymnasium.utils.seeding.np_random(5)
    assert np.array_equal(dyn.reset(ref_rng, 8), obs)
    actions = np.array([0, 1, 2, 2, 1, 0, 2, 1])
    o1, r1, *_ = venv.step(actions)
    o2, r2, _ = dyn.step(actions, ref_rng)
    assert np.array_equal(o1, o2) and np.allclose(r1, r2)
    with pytest.raises(SpecError, match="cannot restart some worlds alone"):
        venv.reset(options={"reset_mask": np.array([True] + [False] * 7)})


def test_vector_env_autoresets_each_world_on_the_next_step(line_sim) -> None:
    venv = SimulatorVectorEnv(line_sim, 4, max_episode_steps=3, partial=True)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    venv.reset(seed=0)
    for _ in range(3):
        obs, rewards, term, trunc, _ = venv.step(np.ones(4, np.int64))
    assert trunc.all() and not term.any()
    obs, rewards, term, trunc, _ = venv.step(np.ones(4, np.int64))
    # The autoreset step: fresh starting positions, zero reward, nothing ended.
    assert np.all((obs[:, 0] >= 2) & (obs[:, 0] <= 4)) and not rewards.any() and not (term | trunc).any()
    venv.reset(options={"reset_mask": np.array([True, False, False, False])})


def test_vector_env_is_reproducible_with_autoreset(line_sim) -> None:
    def run(seed: int) -> np.ndarray:
        venv = SimulatorVectorEnv(line_sim, 16, max_episode_steps=7, partial=True)
        venv.reset(seed=seed)
        venv.action_space.seed(seed)
        return np.stack([venv.step(venv.action_space.sample())[0] for _ in range(30)])

    assert np.array_equal(run(11), run(11)) and not np.array_equal(run(11), run(12))


def test_gym_ids_cover_every_registered_simulator_without_importing_domains() -> None:
    code = (
        "import sys, gymnasium, decision_core.envs.gym as g;"
        "from decision_core.envs import SIMULATORS;"
        "mods = [m for m in sys.modules if m.rsplit('.', 1)[-1] in SIMULATORS.names()];"
        "print(len(mods), sorted(i for i in gymnasium.registry if i.startswith('decision_core/')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("0 ")
    for name in ("inventory", "recommender", "dialogue"):
        assert gym_id(name) in out
    assert gym_id("inventory", "Continuous") in out
    assert set(register_envs()) >= {gym_id("inventory"), gym_id("recommender"), gym_id("dialogue")}


def test_builtin_simulator_env_passes_the_checker_and_reproduces(builtin_sim) -> None:
    env_id = gym_id(builtin_sim.domain)
    env = gymnasium.make(env_id)
    _check(env.unwrapped)
    a = _run(gymnasium.make(env_id), seed=7, steps=50)
    b = _run(gymnasium.make(env_id), seed=7, steps=50)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    spec = builtin_sim.spec()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (spec.state_dim,)


def test_builtin_simulator_vector_env_steps_a_batch(builtin_sim) -> None:
    venv = gymnasium.make_vec(gym_id(builtin_sim.domain), num_envs=32, vectorization_mode="vector_entry_point")
    obs, _ = venv.reset(seed=1)
    venv.action_space.seed(1)
    for _ in range(5):
        obs, rewards, *_ = venv.step(venv.action_space.sample())
    assert obs.shape == (32, builtin_sim.spec().state_dim) and np.isfinite(rewards).all()


def test_continuous_inventory_variant_has_a_box_action_space() -> None:
    pytest.importorskip("decision_core.envs.inventory", reason="the inventory simulator is not present yet")
    env = gymnasium.make(gym_id("inventory", "Continuous"))
    assert isinstance(env.action_space, gymnasium.spaces.Box)
    _check(env.unwrapped)
    a = _run(gymnasium.make(gym_id("inventory", "Continuous")), seed=2, steps=30)
    b = _run(gymnasium.make(gym_id("inventory", "Continuous")), seed=2, steps=30)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_builtin_simulators_restart_single_worlds_so_vector_envs_autoreset(builtin_sim) -> None:
    dyn = builtin_sim.dynamics()
    rng = np.random.default_rng(3)
    dyn.reset(rng, 6)
    policy = builtin_sim.policies()["random"]
    for _ in range(3):
        obs = dyn.observe()
        actions, _ = policy.act(dyn, obs, None, None, rng)
        dyn.step(actions, rng)
    before = dyn.observe()
    mask = np.array([True, False, True, False, False, False])
    after = dyn.reset_worlds(mask, rng)
    assert np.array_equal(after[~mask], before[~mask])  # the other worlds go on untouched
    assert not np.array_equal(after[mask], before[mask])
    venv = gymnasium.make_vec(gym_id(builtin_sim.domain), num_envs=4, vectorization_mode="vector_entry_point")
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
