"""The model-based estimator: fitted once per task, rolled out per policy, within the logs' rules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from decision_core.ope import (
    FQEConfig,
    ModelConfig,
    OPEError,
    OPETask,
    TargetPolicy,
    UniformPolicy,
    _rollout_horizons,
    evaluate_policy,
    evaluate_tasks,
    fit_task_model,
    fit_task_models,
    goal_task,
    reward_task,
)
from decision_core.ope import model as model_module
from decision_core.ope.model import model_values
from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature
from decision_core.store import DomainArrays

LINE = DomainSpec(
    name="line",
    version="1",
    state=(Feature("x"),),
    outcomes=(OutcomeFeature("x", tolerance=0.1),),
    actions=BoxActions(names=("push",), low=(-1.0,), high=(1.0,)),
    reward="logged",
)
STEPS, NOISE = 10, 0.1


def line_step(x: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """x' = x + a + noise; the reward is -|x'| (stay near 0)."""
    nx = x + np.clip(a, -1.0, 1.0) + rng.normal(0.0, NOISE, x.shape)
    return nx, -np.abs(nx)


def line_logs(episodes: int, rng: np.random.Generator) -> DomainArrays:
    """Uniformly random pushes from x0 ~ U(-2, 2); every episode stops after STEPS steps (a time limit)."""
    x = rng.uniform(-2.0, 2.0, episodes)
    states, actions, rewards, nexts = [], [], [], []
    for _ in range(STEPS):
        a = rng.uniform(-1.0, 1.0, episodes)
        nx, r = line_step(x, a, rng)
        states.append(x), actions.append(a), rewards.append(r), nexts.append(nx)
        x = nx

    def flat(cols: list[np.ndarray]) -> np.ndarray:
        return np.stack(cols, axis=1).reshape(-1).astype(np.float32)

    n = episodes * STEPS
    truncated = np.zeros((episodes, STEPS), np.bool_)
    truncated[:, -1] = True
    ends = np.arange(1, episodes + 1, dtype=np.int64) * STEPS
    return DomainArrays(
        spec=LINE,
        states=flat(states)[:, None],
        actions=flat(actions)[:, None],
        next_states=flat(nexts)[:, None],
        rewards=flat(rewards),
        propensities=np.full(n, 0.5, np.float32),
        terminated=np.zeros(n, np.bool_),
        truncated=truncated.reshape(-1),
        action_masks=None,
        episode_starts=ends - STEPS,
        episode_ends=ends,
    )


class Gain(TargetPolicy):
    """The deterministic push ``a = gain * (target - x)``: it has no density, so importance sampling cannot judge
    it."""

    def __init__(self, gain: float, target: float = 0.0) -> None:
        self.spec, self.gain, self.target, self.name = LINE, gain, target, f"gain {gain:g} toward {target:g}"

    def sample(
        self, states: np.ndarray, action_mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        push = np.clip(self.gain * (self.target - states[:, :1]), -1.0, 1.0)
        return push.astype(np.float32), np.ones(len(states), np.float32)

    def log_prob(self, states: np.ndarray, actions: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        raise OPEError("deterministic")

    @property
    def stochastic(self) -> bool:
        return False


def line_truth(gain: float, rng: np.random.Generator, episodes: int = 20000) -> float:
    x = rng.uniform(-2.0, 2.0, episodes)
    total = np.zeros(episodes)
    for _ in range(STEPS):
        x, r = line_step(x, np.clip(-gain * x, -1.0, 1.0), rng)
        total += r
    return float(total.mean())


FAST = ModelConfig(hidden=(64, 64), steps=2000, learning_rate=3e-3)


def test_the_model_ranks_deterministic_continuous_policies_that_importance_sampling_cannot_judge() -> None:
    """Four pulls of a noisy line toward 0, from pushing away to the best one; IS has no density to weigh them."""
    logs = line_logs(600, np.random.default_rng(0))
    task = reward_task(logs)
    dynamics = fit_task_model(logs, task, config=FAST, rng=np.random.default_rng(1))
    gains = [-0.5, 0.0, 0.3, 1.0]  # pushing away from 0, idle, a weak and the best pull back
    truths = [line_truth(g, np.random.default_rng(2)) for g in gains]
    assert truths == sorted(truths)
    with pytest.raises(OPEError, match="'fqe' and 'mb'"):
        evaluate_policy(logs, Gain(1.0), rng=np.random.default_rng(0), estimators=["snips", "mb"], task=task)
    estimates = []
    for g, truth in zip(gains, truths, strict=True):
        report = evaluate_policy(
            logs, Gain(g), rng=np.random.default_rng(3), estimators=["mb"], task=task, dynamics=dynamics
        )
        e = report.estimates["mb"]
        assert e.ess == logs.n_episodes
        assert e.ci_low <= e.value <= e.ci_high
        # The level is biased (about a third too low for the best pull, whose rewards sit at the kink of -|x'|);
        # the ranking is what the test holds it to, plus the right magnitude.
        assert abs(e.value - truth) < 0.4 * abs(truth), (g, e.value, truth)
        estimates.append(e.value)
    assert estimates == sorted(estimates)


def line_goal_truth(target: float, goal: float, rng: np.random.Generator, episodes: int = 20000) -> float:
    """Probability that pushing toward ``target`` brings x within the tolerance of ``goal`` within STEPS steps."""
    x = rng.uniform(-2.0, 2.0, episodes)
    reached = np.zeros(episodes, np.bool_)
    for _ in range(STEPS):
        x, _ = line_step(x, np.clip(target - x, -1.0, 1.0), rng)
        reached |= np.abs(x - goal) <= LINE.tolerances[0]
    return float(reached.mean())


def test_goal_success_is_read_off_the_rolled_out_states_and_the_goals_share_one_fit() -> None:
    logs = line_logs(600, np.random.default_rng(0))
    goals = [0.0, 1.5]
    tasks = [goal_task(logs, np.array([g], np.float32), np.array([True])) for g in goals]
    shared = fit_task_models(logs, tasks, config=FAST, rng=np.random.default_rng(1))
    assert shared[0].net is shared[1].net and [m.goal.values[0] for m in shared] == goals  # type: ignore[union-attr]
    for goal, task, model in zip(goals, tasks, shared, strict=True):
        alone = fit_task_model(logs, task, config=FAST, rng=np.random.default_rng(1))
        assert alone.goal is not None and alone.goal.values[0] == goal
        values = {}
        for target in goals:
            truth = line_goal_truth(target, goal, np.random.default_rng(2))
            policy = Gain(1.0, target)
            for dynamics in (model, alone):
                report = evaluate_policy(
                    logs, policy, rng=np.random.default_rng(3), estimators=["mb"], task=task, dynamics=dynamics
                )
                value = report.estimates["mb"].value
                # A success rate: a probability, near the simulated one.
                assert 0.0 <= value <= 1.0 and abs(value - truth) < 0.1, (goal, target, value, truth)
            values[target] = value
        assert values[goal] == max(values.values())  # the policy that aims at the goal is rated best for it
    # A rollout succeeds where its state reaches the goal, and the episode ends there.
    check = shared[0].goal
    assert check is not None
    assert check.reached(np.array([[0.05], [0.2], [-0.1]])).tolist() == [True, False, True]
    assert fit_task_models(logs, [], rng=np.random.default_rng(0)) == []


def test_goal_tasks_evaluated_together_get_one_fit_and_the_rest_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import decision_core.ope as ope

    fits: list[int] = []  # rows of each goal-dynamics fit
    real = ope._fit_goal_dynamics

    def counted(arrays, rows, **kwargs):  # type: ignore[no-untyped-def]
        fits.append(len(rows))
        return real(arrays, rows, **kwargs)

    monkeypatch.setattr(ope, "_fit_goal_dynamics", counted)
    logs = line_logs(50, np.random.default_rng(0))
    cfg = ModelConfig(hidden=(8,), steps=5)
    goals = [goal_task(logs, np.array([g], np.float32), np.array([True])) for g in (0.0, 1.5)]
    jobs = [(Gain(1.0, 0.0), goals[0]), (Gain(1.0), reward_task(logs)), (Gain(1.0, 1.5), goals[1])]
    reports = evaluate_tasks(logs, jobs, rng=np.random.default_rng(0), estimators=["mb"], model=cfg)
    assert [r.task for r in reports] == [t.description for _, t in jobs]
    assert fits == [len(np.union1d(goals[0].rows, goals[1].rows))]  # one fit for both goals, on the rows of either
    fits.clear()
    evaluate_tasks(logs, jobs[:1], rng=np.random.default_rng(0), estimators=["mb"], model=cfg)
    assert fits == [len(goals[0].rows)]  # one goal: its own fit, as evaluate_policy makes it
    fits.clear()
    evaluate_tasks(logs, jobs, rng=np.random.default_rng(0), estimators=["fqe"], model=cfg, fqe=FQEConfig(steps=5))
    assert fits == []  # mb does not run: nothing to fit
    with pytest.raises(OPEError, match="fit other tasks with fit_task_model"):
        fit_task_models(logs, [reward_task(logs)], rng=np.random.default_rng(0))


def test_fitting_is_seeded_and_leaves_the_global_torch_generator_alone() -> None:
    logs = line_logs(100, np.random.default_rng(0))
    task = reward_task(logs)
    cfg = ModelConfig(hidden=(16,), steps=50)
    before = torch.random.get_rng_state()
    a = fit_task_model(logs, task, config=cfg, rng=np.random.default_rng(5))
    b = fit_task_model(logs, task, config=cfg, rng=np.random.default_rng(5))
    assert torch.equal(before, torch.random.get_rng_state())
    for pa, pb in zip(a.net.parameters(), b.net.parameters(), strict=True):
        assert torch.equal(pa, pb)
    starts = logs.states[logs.episode_starts]
    horizons = np.full(len(starts), STEPS)
    va = model_values(a, Gain(1.0), starts, horizons, rng=np.random.default_rng(9))
    vb = model_values(b, Gain(1.0), starts, horizons, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(va, vb)


ITEMS = DomainSpec(
    name="items",
    version="1",
    state=(Feature("shown"),),
    outcomes=(OutcomeFeature("shown", tolerance=0.5),),
    actions=DiscreteActions(labels=tuple(f"item{i}" for i in range(6)), once_per_episode=True),
    reward="logged",
)


class Recording(TargetPolicy):
    """Uniform over the available items; remembers the masks and choices of every call."""

    def __init__(self) -> None:
        self.spec, self.name = ITEMS, "recording"
        self.masks: list[np.ndarray | None] = []
        self.actions: list[np.ndarray] = []

    def probs(self, states: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        return UniformPolicy(ITEMS).probs(states, action_mask)

    def sample(
        self, states: np.ndarray, action_mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        actions, p = super().sample(states, action_mask, rng)
        self.masks.append(None if action_mask is None else action_mask.copy())
        self.actions.append(actions)
        return actions, p


def test_once_per_episode_rollouts_start_from_the_logged_mask_and_never_repeat_an_item() -> None:
    rng = np.random.default_rng(0)
    episodes, length = 40, 4
    actions = np.stack([rng.permutation(6)[:length] for _ in range(episodes)]).reshape(-1)
    shown = np.tile(np.arange(length, dtype=np.float32), episodes)
    n = episodes * length
    ends = np.arange(1, episodes + 1, dtype=np.int64) * length
    logs = DomainArrays(
        spec=ITEMS,
        states=shown[:, None],
        actions=actions.astype(np.float32)[:, None],
        next_states=(shown + 1)[:, None],
        rewards=(actions < 2).astype(np.float32),
        propensities=np.full(n, 0.2, np.float32),
        terminated=np.zeros(n, np.bool_),
        truncated=np.zeros(n, np.bool_),
        action_masks=None,
        episode_starts=ends - length,
        episode_ends=ends,
    ).with_derived_masks()
    # Start the evaluated episodes one step in, where the logged mask already excludes the first item shown.
    later = np.concatenate([np.arange(s + 1, e) for s, e in zip(logs.episode_starts, logs.episode_ends, strict=True)])
    task_ends = np.cumsum(np.full(episodes, length - 1))
    task = OPETask("reward: logged", later, logs.rewards[later].astype(np.float64), task_ends - (length - 1), task_ends)
    policy = Recording()
    evaluate_policy(
        logs, policy, rng=np.random.default_rng(1), estimators=["mb"], task=task, model=ModelConfig((8,), steps=20)
    )
    assert policy.masks[0] is not None
    # Every episode is rolled out in each of the ensemble's members: their rows one block after another.
    members = ModelConfig().members
    np.testing.assert_array_equal(policy.masks[0], np.tile(logs.action_masks[later[task.episode_starts]], (members, 1)))
    used = ~policy.masks[0]
    for mask, chosen in zip(policy.masks[1:], policy.actions[:-1], strict=True):
        used[np.arange(episodes * members), chosen] = True
        assert mask is not None
        np.testing.assert_array_equal(mask, ~used)


def test_rollouts_run_to_the_logged_length_where_the_logs_stop_and_to_the_longest_where_episodes_ended() -> None:
    # Episode 0 terminates after 2 steps, episode 1 stops after 3 (no flag), episode 2 is truncated after 5.
    lengths = np.array([2, 3, 5])
    ends = np.cumsum(lengths)
    n = int(ends[-1])
    terminated = np.zeros(n, np.bool_)
    terminated[ends[0] - 1] = True
    truncated = np.zeros(n, np.bool_)
    truncated[ends[2] - 1] = True
    x = np.concatenate([np.arange(k, dtype=np.float32) for k in lengths])
    logs = DomainArrays(
        spec=ITEMS,
        states=x[:, None],
        actions=np.zeros((n, 1), np.float32),
        next_states=(x + 1)[:, None],
        rewards=np.zeros(n, np.float32),
        propensities=np.full(n, 0.5, np.float32),
        terminated=terminated,
        truncated=truncated,
        action_masks=None,
        episode_starts=ends - lengths,
        episode_ends=ends,
    )
    task = reward_task(logs)
    np.testing.assert_array_equal(_rollout_horizons(logs, task.episode_starts, task.episode_ends, task.rows), [5, 3, 5])
    # A goal task (shown reaches 2) cuts episodes 1 and 2 after their second step: those cuts are ends.
    cut = goal_task(logs, np.array([2.0], np.float32), np.array([True]))
    np.testing.assert_array_equal(_rollout_horizons(logs, cut.episode_starts, cut.episode_ends, cut.rows), [5, 5, 5])
    assert list(cut.episode_ends - cut.episode_starts) == [2, 2, 2]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="steps"):
        ModelConfig(steps=0)
    with pytest.raises(ValueError, match="margin"):
        ModelConfig(margin=-1.0)
    with pytest.raises(ValueError, match="hidden"):
        ModelConfig(hidden=())
    with pytest.raises(ValueError, match="max_classes"):
        ModelConfig(max_classes=-1)
    with pytest.raises(ValueError, match="rollouts must be one of every, one"):
        ModelConfig(rollouts="all")
    with pytest.raises(ValueError, match="member_data must be one of all, bootstrap"):
        ModelConfig(member_data="half")


def test_refits_give_an_interval_that_reflects_the_model_uncertainty() -> None:
    logs = line_logs(60, np.random.default_rng(3))
    cfg = ModelConfig(hidden=(16,), steps=150)
    one = evaluate_policy(logs, Gain(1.0), rng=np.random.default_rng(0), estimators=["mb"], model=cfg)
    refit = evaluate_policy(
        logs, Gain(1.0), rng=np.random.default_rng(0), estimators=["mb"], model=cfg, model_refits=4
    ).estimates["mb"]
    e = one.estimates["mb"]
    assert refit.value == e.value  # the same point estimate; only the interval changes
    assert refit.ci_low <= refit.value <= refit.ci_high
    assert refit.ci_high - refit.ci_low > e.ci_high - e.ci_low


def test_a_model_fitted_on_another_domain_is_refused() -> None:
    logs = line_logs(20, np.random.default_rng(0))
    fitted = fit_task_model(
        logs, reward_task(logs), config=ModelConfig(hidden=(8,), steps=5), rng=np.random.default_rng(0)
    )
    other = dataclasses.replace(logs, spec=dataclasses.replace(LINE, name="other"))
    with pytest.raises(OPEError, match="fitted on domain 'line'.*fit_task_model"):
        evaluate_policy(other, Gain(1.0), rng=np.random.default_rng(0), estimators=["mb"], dynamics=fitted)


def test_refits_use_the_settings_of_the_model_that_was_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    import decision_core.ope as ope

    logs = line_logs(40, np.random.default_rng(3))
    small = ModelConfig(hidden=(8,), members=2, steps=30)
    fitted = fit_task_model(logs, reward_task(logs), config=small, rng=np.random.default_rng(0))
    used: list[ModelConfig | None] = []
    real = ope.fit_task_model

    def recording(*args: object, config: ModelConfig | None = None, **kwargs: object) -> object:
        used.append(config)
        return real(*args, config=config, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ope, "fit_task_model", recording)
    evaluate_policy(logs, Gain(1.0), rng=np.random.default_rng(0), estimators=["mb"], dynamics=fitted, model_refits=2)
    assert used == [small, small]  # not the default settings: the evaluated model's own


COUNTER = DomainSpec(
    name="counter",
    version="1",
    state=(Feature("count", "int"), Feature("full", "bool"), Feature("level")),
    outcomes=(OutcomeFeature("count", tolerance=0.5),),
    actions=DiscreteActions(labels=("wait", "add")),
    reward="logged",
)


def counter_logs(episodes: int, rng: np.random.Generator, steps: int = 6) -> DomainArrays:
    """``add`` raises the count by one; ``full`` is set once the count reaches 3 and pays 1 per step; ``level``
    is noise. Uniformly random actions; every episode stops after ``steps`` (a time limit)."""
    count, level = np.zeros(episodes), rng.normal(0.0, 1.0, episodes)
    rows: list[list[np.ndarray]] = [[], [], [], []]
    for _ in range(steps):
        a = rng.integers(0, 2, episodes)
        nc, nl = count + a, level + rng.normal(0.0, 0.3, episodes)
        s, ns = np.stack([count, count >= 3, level], 1), np.stack([nc, nc >= 3, nl], 1)
        for col, v in zip(rows, (s, a, ns, (nc >= 3).astype(float)), strict=True):
            col.append(v)
        count, level = nc, nl
    states, actions, nexts, rewards = (np.stack(c, 1).reshape(episodes * steps, -1).astype(np.float32) for c in rows)
    n, ends = episodes * steps, np.arange(1, episodes + 1, dtype=np.int64) * steps
    return DomainArrays(
        spec=COUNTER,
        states=states,
        actions=actions,
        next_states=nexts,
        rewards=rewards[:, 0],
        propensities=np.full(n, 0.5, np.float32),
        terminated=np.zeros(n, np.bool_),
        truncated=np.isin(np.arange(n), ends - 1),
        action_masks=None,
        episode_starts=ends - steps,
        episode_ends=ends,
    )


class Always(TargetPolicy):
    def __init__(self, action: int) -> None:
        self.spec, self.action, self.name = COUNTER, action, f"always {action}"

    def sample(
        self, states: np.ndarray, action_mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return np.full((len(states), 1), self.action, np.float32), np.ones(len(states), np.float32)

    def log_prob(self, states: np.ndarray, actions: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        return np.where(actions.reshape(-1) == self.action, 0.0, -np.inf)


def test_whole_number_features_change_by_a_categorical_over_their_logged_changes() -> None:
    logs = counter_logs(400, np.random.default_rng(0))
    task = reward_task(logs, "logged")
    config = ModelConfig(hidden=(64, 64), steps=1500, learning_rate=3e-3)
    model = fit_task_model(logs, task, config=config, rng=np.random.default_rng(1))
    assert model.categorical.tolist() == [0, 1] and model.gaussian.tolist() == [2]  # level is a float
    assert model.changes.tolist() == [[0.0, 1.0], [0.0, 1.0]] and model.classes.all()  # the count adds, the flag sets
    # Rolled-out counts stay whole numbers and flags stay flags, wherever the rollout goes.
    rng = np.random.default_rng(2)
    states = logs.states[rng.integers(0, logs.n_steps, 500)].astype(np.float64)
    for _ in range(8):
        states, _, _ = model.step(states, rng.integers(0, 2, (500, 1)), rng.integers(0, model.members, 500), rng)
        assert np.array_equal(states[:, :2], np.round(states[:, :2])) and set(np.unique(states[:, 1])) <= {0.0, 1.0}
    # The counter's rule is learned: always adding from 0 fills it after three steps and pays 4 of 6.
    add = evaluate_policy(logs, Always(1), rng=np.random.default_rng(3), task=task, dynamics=model, estimators=["mb"])
    wait = evaluate_policy(logs, Always(0), rng=np.random.default_rng(3), task=task, dynamics=model, estimators=["mb"])
    assert add.estimates["mb"].value == pytest.approx(4.0, abs=0.3)
    assert wait.estimates["mb"].value == pytest.approx(0.0, abs=0.2)


def test_every_member_rolls_out_every_episode_unless_one_member_each_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logs = counter_logs(300, np.random.default_rng(0))
    task = reward_task(logs, "logged")
    model = fit_task_model(logs, task, config=ModelConfig(hidden=(16,), steps=200), rng=np.random.default_rng(1))
    starts, horizons, m = logs.states[logs.episode_starts], np.full(logs.n_episodes, 6), model.members
    every = model_values(model, UniformPolicy(COUNTER), starts, horizons, rng=np.random.default_rng(2))
    assert every.shape == (logs.n_episodes, m)
    # Rolled out a bounded number of rows at a time: the same values up to the rollouts' noise.
    monkeypatch.setattr(model_module, "ROLLOUT_ROWS", 250)  # 50 start states in five members per pass
    chunked = model_values(model, UniformPolicy(COUNTER), starts, horizons, rng=np.random.default_rng(2))
    assert chunked.shape == every.shape and chunked.mean() == pytest.approx(every.mean(), abs=0.1)
    # Rows in one block per member step exactly as rows that each name their member.
    rows, actions = np.tile(starts, (m, 1)), np.random.default_rng(3).integers(0, 2, (m * logs.n_episodes, 1))
    blocks = model.step(rows, actions, None, np.random.default_rng(4))
    named = model.step(rows, actions, np.repeat(np.arange(m), logs.n_episodes), np.random.default_rng(4))
    for a, b in zip(blocks, named, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="equal blocks"):
        model.step(rows[:-1], actions[:-1], None, np.random.default_rng(4))
    # One member per rollout: a value per episode, about the members' mean.
    cheap = dataclasses.replace(model, config=dataclasses.replace(model.config, rollouts="one"))
    one = model_values(cheap, UniformPolicy(COUNTER), starts, horizons, rng=np.random.default_rng(2))
    assert one.shape == (logs.n_episodes,)
    assert one.mean() == pytest.approx(every.mean(), abs=0.25)
    # evaluate_policy takes either: its estimate is the mean of those values, up to the rollouts' noise.
    for d, values in ((model, every), (cheap, one)):
        e = evaluate_policy(
            logs, UniformPolicy(COUNTER), rng=np.random.default_rng(5), task=task, dynamics=d, estimators=["mb"]
        ).estimates["mb"]
        assert e.n_episodes == logs.n_episodes and e.value == pytest.approx(values.mean(), abs=0.25)


def test_which_features_are_categorical_follows_dtype_values_and_max_classes() -> None:
    logs = counter_logs(100, np.random.default_rng(0))
    task = reward_task(logs, "logged")
    fit = ModelConfig(hidden=(8,), steps=2)

    def categorical(arrays: DomainArrays, max_classes: int = fit.max_classes) -> list[int]:
        config = dataclasses.replace(fit, max_classes=max_classes)
        return fit_task_model(arrays, task, config=config, rng=np.random.default_rng(0)).categorical.tolist()

    model = fit_task_model(logs, task, config=fit, rng=np.random.default_rng(0))
    assert model.categorical.tolist() == [0, 1]
    assert (model.low[1], model.high[1]) == (0.0, 1.0)  # a flag is clipped to [0, 1], not the widened range
    assert categorical(logs, max_classes=0) == []
    assert categorical(logs, max_classes=1) == []  # both change by 0 or 1: two values, over a limit of one
    halves = dataclasses.replace(logs, states=logs.states + np.array([0.5, 0, 0], np.float32))
    assert categorical(halves) == [1]  # counts that are not whole numbers stay Gaussian


def test_members_fitted_on_bootstrap_resamples_disagree_where_rows_are_few() -> None:
    # 40 transitions whose changes follow no pattern: a member can only know the ones it was fitted on.
    rng = np.random.default_rng(0)
    s = rng.uniform(-2.0, 2.0, (40, 1)).astype(np.float32)
    a = rng.uniform(-1.0, 1.0, (40, 1)).astype(np.float32)
    nxt = (s + rng.uniform(-1.0, 1.0, (40, 1))).astype(np.float32)
    spread = {}
    for data in ("all", "bootstrap"):
        config = ModelConfig(hidden=(64, 64), steps=800, learning_rate=3e-3, member_data=data)
        model = model_module.fit_transitions(
            LINE, s, a, -np.abs(nxt[:, 0]), nxt, np.zeros(40, np.float32), config=config, rng=np.random.default_rng(1)
        )
        with torch.no_grad():
            mean_change = model.net(model._inputs(s, a))[..., 0]  # (members, rows)
        spread[data] = float(mean_change.std(dim=0).mean())
    # Each bootstrap member misses about a third of the rows, and predicts something else there.
    assert spread["bootstrap"] > 2.5 * spread["all"], spread
