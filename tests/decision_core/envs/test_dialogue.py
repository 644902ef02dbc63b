"""The dialogue simulator: the user it simulates, the belief it exposes, its policies, goals and raw logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from decision_core.envs import get_simulator, goal_reached
from decision_core.envs.dialogue import (
    ACTION_LABELS,
    BOOK,
    BYE,
    CONFIRM,
    OFFER,
    REQUEST,
    SLOTS,
    SPEC,
    SUCCESS_REWARD,
    TURN_COST,
    BehaviourPolicy,
    DialogueDynamics,
    DialogueParams,
    action_mask,
)
from decision_core.envs.rollout import rollout
from decision_core.reward import parse_reward

SIM = get_simulator("dialogue")
IDX = {name: i for i, name in enumerate(SPEC.state_names)}
CONF = [IDX[f"{s}_conf"] for s in SLOTS]
CONFIRMED = [IDX[f"{s}_confirmed"] for s in SLOTS]
#: A user who is always understood, never changes their mind and gives one slot at a time.
CLEAR = DialogueParams(nlu_accuracy=(1.0, 1.0), change_mind=0.0, over_inform=0.0, opening_slots=(1.0, 0.0, 0.0))


def run(policy: str, *, batch: int = 64, seed: int = 0, params: DialogueParams | None = None, **goal_kwargs):
    return rollout(
        SIM.dynamics(params=params),
        SIM.policies()[policy],
        batch=batch,
        max_steps=SIM.max_steps,
        rng=np.random.default_rng(seed),
        **goal_kwargs,
    )


def goal_success(policy: str, goal_name: str, *, batch: int = 300, seed: int = 11) -> float:
    """Share of dialogues in which ``policy`` reaches the goal (pursuing it when it is goal-aware)."""
    goal = next(g for g in SIM.goal_set() if g.name == goal_name)
    values, mask = goal.vector(SPEC)
    episodes = run(
        policy,
        batch=batch,
        seed=seed,
        goals=np.tile(values, (batch, 1)),
        goal_mask=np.tile(mask, (batch, 1)),
        spec=SPEC,
        stop_on_goal=True,
    )
    final = episodes.observations[np.arange(batch), episodes.lengths][:, SPEC.outcome_index]
    return float(goal_reached(final, values, mask, SPEC.tolerances).mean())


def step(dyn: DialogueDynamics, label: str, rng: np.random.Generator):
    return dyn.step(np.array([ACTION_LABELS.index(label)]), rng)


def test_observations_are_the_belief_state_vector() -> None:
    episodes = run("behaviour", batch=32)
    obs = episodes.observations
    assert obs.dtype == np.float32 and obs.shape[2] == SPEC.state_dim
    valid = np.arange(obs.shape[1])[None, :] <= episodes.lengths[:, None]
    o = obs[valid]
    assert np.array_equal(o[:, IDX["slots_filled"]], (o[:, CONF] > 0).sum(1))
    assert np.array_equal(o[:, IDX["slots_confirmed"]], o[:, CONFIRMED].sum(1))
    assert ((o[:, CONF] == 0) | ((o[:, CONF] >= 0.05) & (o[:, CONF] <= 0.99))).all()
    # The turn counts system acts; the user opens before the first one.
    assert np.array_equal(obs[:, 0, IDX["turn"]], np.zeros(32)) and (obs[:, 0, IDX["slots_filled"]] >= 1).all()
    t = np.arange(obs.shape[1])
    assert (obs[valid][:, IDX["turn"]] == np.broadcast_to(t, obs.shape[:2])[valid]).all()


def test_seeded_runs_reproduce_and_one_world_runs_the_same_code() -> None:
    a, b = run("behaviour", seed=5), run("behaviour", seed=5)
    assert np.array_equal(a.observations, b.observations) and np.array_equal(a.actions, b.actions)
    assert np.array_equal(a.propensities, b.propensities) and np.array_equal(
        a.extras["user_conf"], b.extras["user_conf"]
    )
    assert not np.array_equal(a.observations, run("behaviour", seed=6).observations)
    one = run("oracle", batch=1, seed=3)
    assert one.observations.shape[0] == 1 and one.terminated[0]


def test_a_clearly_heard_user_is_served_in_order_and_the_booking_succeeds() -> None:
    dyn, rng = SIM.dynamics(params=CLEAR), np.random.default_rng(0)
    obs = dyn.reset(rng, 1)
    assert obs[0, IDX["slots_filled"]] == 1
    assert not action_mask(obs)[0, OFFER] and not action_mask(obs)[0, BOOK]
    for s in SLOTS:
        if obs[0, IDX[f"{s}_conf"]] == 0:
            obs, reward, term = step(dyn, f"request({s})", rng)
            assert obs[0, IDX[f"{s}_conf"]] > 0 and reward[0] == -TURN_COST and not term[0]
    assert obs[0, IDX["slots_filled"]] == 5 and action_mask(obs)[0, OFFER]
    obs, _, _ = step(dyn, "confirm(area)", rng)
    assert obs[0, IDX["area_confirmed"]] == 1 and obs[0, IDX["slots_confirmed"]] == 1
    obs, _, _ = step(dyn, "offer", rng)
    assert obs[0, IDX["offer_pending"]] == 1 and obs[0, IDX["offer_accepted"]] == 1 and obs[0, IDX["offers_made"]] == 1
    obs, reward, term = step(dyn, "book", rng)
    assert obs[0, IDX["booked"]] == 1 and obs[0, IDX["task_success"]] == 1
    assert reward[0] == SUCCESS_REWARD - TURN_COST and term[0]
    # A finished dialogue stays as it ended and earns nothing more.
    after, reward, term = step(dyn, "request(area)", rng)
    assert np.array_equal(after, obs) and reward[0] == 0 and term[0]


def test_misheard_values_are_denied_and_a_wrong_booking_fails() -> None:
    never_right = DialogueParams(nlu_accuracy=(0.0, 0.0), change_mind=0.0, over_inform=0.0, patience=(50, 50))
    dyn, rng = SIM.dynamics(params=never_right), np.random.default_rng(1)
    dyn.reset(rng, 1)
    for s in SLOTS:
        step(dyn, f"request({s})", rng)
    s = SLOTS[0]
    obs, _, _ = step(dyn, f"confirm({s})", rng)
    assert obs[0, IDX["negations"]] == 1 and obs[0, IDX[f"{s}_confirmed"]] == 0
    while obs[0, IDX["slots_filled"]] < 5:  # the user may not restate the value; ask again
        obs, _, _ = step(dyn, f"request({s})", rng)
    while not action_mask(obs)[0, BOOK]:  # a wrong offer is refused or met with a noncommittal "ok"
        obs, _, _ = step(dyn, "offer", rng)
        assert obs[0, IDX["offer_accepted"]] == 0
    obs, reward, term = step(dyn, "book", rng)
    assert obs[0, IDX["booked"]] == 1 and obs[0, IDX["task_success"]] == 0 and reward[0] == -TURN_COST and term[0]


def test_an_unavailable_act_only_wastes_a_turn() -> None:
    dyn, rng = SIM.dynamics(params=CLEAR), np.random.default_rng(2)
    before = dyn.reset(rng, 1)
    obs, reward, term = step(dyn, "book", rng)
    assert obs[0, IDX["booked"]] == 0 and reward[0] == -TURN_COST and not term[0]
    assert obs[0, IDX["turn"]] == 1 and np.array_equal(
        np.delete(obs[0], IDX["turn"]), np.delete(before[0], IDX["turn"])
    )
    with pytest.raises(ValueError, match="action indices"):
        dyn.step(np.array([len(ACTION_LABELS)]), rng)


@pytest.mark.parametrize(
    "bad",
    [{"change_mind": 1.5}, {"nlu_accuracy": (0.9, 0.5)}, {"opening_slots": (0.5, 0.5, 0.5)}, {"patience": (0, 3)}],
)
def test_params_are_validated(bad: dict) -> None:
    with pytest.raises(ValueError, match="DialogueParams"):
        DialogueParams(**bad)
    with pytest.raises(ValueError, match="only 'params'"):
        SIM.dynamics(continuous=True)


def test_impatient_users_hang_up() -> None:
    dyn, rng = SIM.dynamics(params=DialogueParams(patience=(3, 3))), np.random.default_rng(3)
    dyn.reset(rng, 4)
    ended = [dyn.step(np.full(4, REQUEST), rng)[2] for _ in range(3)]
    assert not ended[1].any() and ended[2].all()
    assert (dyn.info()["user_act"][:, 0] == 5).all()  # the last user act is "bye"


@pytest.mark.parametrize("policy", ["behaviour", "random", "oracle"])
def test_policies_choose_available_acts_and_report_their_probability(policy: str) -> None:
    episodes = run(policy, batch=128, seed=4)
    steps = np.arange(episodes.actions.shape[1])[None, :] < episodes.lengths[:, None]
    masks = episodes.extras["action_mask"][:, :-1][steps]
    acts = episodes.actions[steps]
    assert masks[np.arange(acts.size), acts].all()
    p = episodes.propensities[steps]
    assert ((p > 0) & (p <= 1)).all()
    if policy == "random":
        np.testing.assert_allclose(p, 1 / masks.sum(1), rtol=1e-6)
    if policy == "oracle":
        assert (p == 1).all()


def test_behaviour_probabilities_match_its_sampling() -> None:
    """The logged propensity is the real sampling probability (what off-policy evaluation relies on)."""
    policy, rng = BehaviourPolicy(), np.random.default_rng(5)
    obs = np.repeat(run("behaviour", batch=1, seed=9).observations[:, 0], 20000, axis=0)
    probs = policy.probs(SIM.dynamics(), obs, None, None)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs[0, BYE] == 0 and (probs[0][~action_mask(obs[:1])[0]] == 0).all()
    actions, props = policy.act(SIM.dynamics(), obs, None, None, rng)
    freq = np.bincount(actions, minlength=len(ACTION_LABELS)) / len(actions)
    np.testing.assert_allclose(freq, probs[0], atol=0.015)
    np.testing.assert_allclose(props, probs[0, actions])


def test_the_reward_is_success_minus_turn_cost_as_the_spec_states() -> None:
    episodes = run("behaviour", batch=64, seed=8)
    steps = np.arange(episodes.actions.shape[1])[None, :] < episodes.lengths[:, None]
    s, s2 = episodes.observations[:, :-1][steps], episodes.observations[:, 1:][steps]
    np.testing.assert_allclose(parse_reward(SPEC.reward, SPEC).evaluate(s, s2), episodes.rewards[steps])
    success = episodes.observations[np.arange(64), episodes.lengths, IDX["task_success"]]
    np.testing.assert_allclose(episodes.rewards.sum(1), SUCCESS_REWARD * success - TURN_COST * episodes.lengths)


def test_goal_set_is_in_the_spec_with_hard_goals() -> None:
    goals = SIM.goal_set()
    assert 3 <= len(goals) <= 6 and sum(g.hard for g in goals) >= 2
    assert SPEC.goals == {g.name: g.targets for g in goals}
    assert {"all_confirmed", "booking_made"} <= {g.name for g in goals}


def test_behaviour_rarely_reaches_hard_goals_but_its_logs_cover_them() -> None:
    for goal in SIM.goal_set():
        behaviour, oracle = goal_success("behaviour", goal.name), goal_success("oracle", goal.name)
        assert behaviour > 0.02, f"{goal.name}: the logs need some dialogues that reach it"
        assert oracle >= 0.9, goal.name
        if goal.hard:
            assert behaviour < 0.6 and oracle - behaviour > 0.3, goal.name


def test_the_reward_task_separates_oracle_behaviour_and_random() -> None:
    returns = {p: float(run(p, batch=300, seed=12).rewards.sum(1).mean()) for p in ("random", "behaviour", "oracle")}
    normalised = 100 * (returns["behaviour"] - returns["random"]) / (returns["oracle"] - returns["random"])
    assert returns["oracle"] > returns["behaviour"] > returns["random"]
    assert normalised <= 70, returns


def test_oracle_pursues_the_goal_it_is_given() -> None:
    """Asked for every slot confirmed, the oracle confirms them; asked for nothing, it books without confirming."""
    assert goal_success("oracle", "all_confirmed", batch=100) > 0.9
    free = run("oracle", batch=100, seed=13)
    confirms = (free.actions >= CONFIRM) & (free.actions < OFFER)
    assert not confirms[np.arange(free.actions.shape[1])[None, :] < free.lengths[:, None]].any()


def test_raw_logs_are_turn_level_acts(tmp_path: Path) -> None:
    episodes = run("behaviour", batch=20, seed=14)
    [path] = SIM.write_logs(episodes, tmp_path, seed=14)
    frame = pl.read_csv(path, infer_schema=False)
    assert frame.columns == [
        "dialogue_id",
        "turn",
        "speaker",
        "act",
        "slot",
        "value",
        "confidence",
        "propensity",
        "action_mask",
        "task_success",
        "timestamp",
    ]
    system, user = frame.filter(pl.col("speaker") == "system"), frame.filter(pl.col("speaker") == "user")
    assert system.height == int(episodes.lengths.sum())
    assert system["propensity"].null_count() == 0 and system["action_mask"].str.len_chars().eq(len(ACTION_LABELS)).all()
    assert user["confidence"].null_count() == 0 and user["propensity"].null_count() == user.height
    assert set(user["act"]) <= {"inform", "affirm", "negate", "ack", "thankyou", "bye"}
    informs = user.filter(pl.col("act") == "inform")
    assert informs["slot"].is_in(SLOTS).all() and informs["value"].null_count() == 0
    # Each dialogue: user turns 0..N and system turns 0..N-1; every dialogue ends with the user's "bye".
    per = frame.group_by("dialogue_id").agg(
        pl.col("turn").filter(pl.col("speaker") == "user").cast(pl.Int32).max().alias("last_user"),
        pl.col("turn").filter(pl.col("speaker") == "system").cast(pl.Int32).max().alias("last_system"),
        pl.col("act").last().alias("last_act"),
    )
    assert (per["last_user"] == per["last_system"] + 1).all() and (per["last_act"] == "bye").all()
    stamps = frame["timestamp"].str.to_datetime()
    assert (
        frame.with_columns(stamps)
        .group_by("dialogue_id")
        .agg(pl.col("timestamp").diff().min())["timestamp"]
        .dt.total_milliseconds()
        .min()
        >= 0
    )
