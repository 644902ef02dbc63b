"""The service in process: decisions, feedback joined into steps, validation, auth, hooks, models, metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from decision_core.algos import create_agent, load_agent
from decision_core.errors import RegistryError
from decision_core.schema import DomainSpec
from decision_core.store import DecisionStore
from serving.app import create_app
from serving.hooks import HookManager
from serving.policy import CatalogEntry
from serving.settings import ServingSettings

STATE = {"level": 0.0, "noise": 0.1, "time": 0.0}
KEY = "test-key-1"  # the key the conftest's settings configure


def auth() -> dict[str, str]:
    return {"X-API-Key": KEY}


def act(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/act", json={"state": STATE, **body})
    assert r.status_code == 200, r.text
    return r.json()


def feedback(client: TestClient, decision_id: str, level: float, **extra: object) -> dict:
    body = {"decision_id": decision_id, "next_state": {"level": level, "noise": 0.0, "time": 1.0}, **extra}
    r = client.post("/v1/feedback", json=body, headers=auth())
    assert r.status_code == 200, r.text
    return r.json()


def stored_steps(client: TestClient) -> list[tuple]:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    query = "SELECT episode_id, step, state, action, propensity, next_state, reward, terminated FROM steps_walk "
    return ctx.writer.call(lambda s: s.con.execute(query + "ORDER BY episode_id, step").fetchall()).result()


# -- decisions -----------------------------------------------------------------------------------------------------
def test_act_returns_a_labelled_action_with_its_propensity_and_model(client: TestClient) -> None:
    d = act(client, goal={"level": 3.0}, request_id="r-1")
    assert d["action"]["label"] in ("down", "stay", "up")
    assert d["action"]["index"] == ("down", "stay", "up").index(d["action"]["label"])
    # epsilon 0.2 over 3 actions: the greedy action has 0.2/3 + 0.8, the others 0.2/3.
    assert d["propensity"] == pytest.approx(0.8 + 0.2 / 3, abs=1e-6) or d["propensity"] == pytest.approx(0.2 / 3)
    assert d["model"] == {"name": "walk", "version": "local"}
    assert d["request_id"] == "r-1"
    assert d["episode_id"] == d["decision_id"]  # no episode given: the decision is an episode of its own


def test_greedy_request_has_propensity_one_and_named_goal_works(client: TestClient) -> None:
    d = act(client, task="high", exploration={"greedy": True})
    assert d["propensity"] == 1.0


def test_temperature_exploration_gives_a_proper_distribution(client: TestClient) -> None:
    props = {}
    for _ in range(60):
        d = act(client, goal={"level": 2.0}, exploration={"epsilon": 0.0, "temperature": 2.0})
        props[d["action"]["index"]] = d["propensity"]
    assert 0.999 <= sum(props.values()) <= 1.001 or len(props) < 3


def test_act_batch_answers_every_item_in_order(client: TestClient) -> None:
    items = [{"state": {**STATE, "level": float(i)}, "request_id": f"b{i}"} for i in range(50)]
    r = client.post("/v1/act:batch", json={"items": items})
    assert r.status_code == 200, r.text
    decisions = r.json()["decisions"]
    assert [d["request_id"] for d in decisions] == [f"b{i}" for i in range(50)]
    assert len({d["decision_id"] for d in decisions}) == 50


# -- feedback ------------------------------------------------------------------------------------------------------
def test_feedback_is_joined_with_its_decision_into_dense_episodes(client: TestClient) -> None:
    # Two interleaved episodes; the steps table numbers each densely in feedback order.
    a0 = act(client, episode_id="a", step=0, goal={"level": 2.0})
    b0 = act(client, episode_id="b", step=0)
    r = feedback(client, a0["decision_id"], 1.0, reward=0.5)
    assert (r["status"], r["episode_id"], r["step"]) == ("stored", "served/a", 0)
    assert feedback(client, b0["decision_id"], -1.0)["step"] == 0
    a1 = act(client, episode_id="a", step=1)
    r = feedback(client, a1["decision_id"], 2.0, terminated=True)
    assert (r["episode_id"], r["step"]) == ("served/a", 1)
    rows = stored_steps(client)
    assert [(e, s) for e, s, *_ in rows] == [("served/a", 0), ("served/a", 1), ("served/b", 0)]
    _, _, state, action, prop, nxt, reward, _ = rows[0]
    assert list(state) == pytest.approx([0.0, 0.1, 0.0])
    assert action[0] == a0["action"]["index"]
    assert prop == pytest.approx(a0["propensity"])
    assert list(nxt) == [1.0, 0.0, 1.0] and reward == 0.5
    assert rows[1][7] is True
    # The served steps are training data: the store reads them back as episodes.
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    arrays = ctx.writer.call(lambda s: s.load_arrays("walk")).result()
    assert arrays.n_steps == 3 and arrays.n_episodes == 2


def test_feedback_retry_is_acknowledged_once(client: TestClient) -> None:
    d = act(client)
    first = feedback(client, d["decision_id"], 1.0)
    again = feedback(client, d["decision_id"], 1.0)
    assert first["status"] == "stored" and again["status"] == "already_stored"
    assert again["step"] == first["step"]
    assert len(stored_steps(client)) == 1


def test_feedback_survives_a_restart_and_joins_decisions_from_the_store(settings: ServingSettings) -> None:
    with TestClient(create_app(settings)) as c:
        d1, d2 = act(c, episode_id="e"), act(c, episode_id="e")
        feedback(c, d1["decision_id"], 1.0)
    with TestClient(create_app(settings)) as c:  # a new process would start the same way: empty caches
        r = feedback(c, d2["decision_id"], 2.0)
        assert (r["episode_id"], r["step"]) == ("served/e", 1)
        assert feedback(c, d1["decision_id"], 1.0)["status"] == "already_stored"
    with DecisionStore(settings.core.db_path, read_only=True) as store:
        assert store.count_steps("walk") == 2


# -- validation ----------------------------------------------------------------------------------------------------
SECRET = "s3cr3t-" * 40


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"state": {"level": 0.0, "time": 0.0}}, "state.noise"),
        ({"state": {**STATE, "bogus": 1.0}}, "state.bogus"),
        ({"state": [0.0, 0.1, 0.0]}, "state"),
        ({"state": {**STATE, "level": "high"}}, "state.level"),
        ({"state": STATE, "goal": {"nope": 1.0}}, "goal.nope"),
        ({"state": STATE, "goal": {"noise": 1.0}}, "goal.noise"),
        ({"state": STATE, "task": "unknown-goal"}, "task"),
        ({"state": STATE, "task": "reward"}, "task"),
        ({"state": STATE, "action_mask": [True, False]}, "action_mask"),
        ({"state": STATE, "action_mask": [False, False, False]}, "action_mask"),
        ({"state": STATE, "exploration": {"epsilon": 2.0}}, "exploration.epsilon"),
        ({"state": STATE, "surprise": SECRET}, "surprise"),
        ({"state": {**STATE, SECRET: 1.0}}, "state."),
    ],
)
def test_invalid_decisions_are_422_naming_the_field_without_echoing(client: TestClient, body: dict, field: str) -> None:
    r = client.post("/v1/act", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"].startswith(field), err
    assert SECRET[:60] not in r.text and len(r.content) < 800  # names the field, never echoes the payload


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(client: TestClient, literal: str) -> None:
    raw = '{"state": {"level": LIT, "noise": 0, "time": 0}}'.replace("LIT", literal)
    r = client.post("/v1/act", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "state.level"
    raw = '{"state": {"level": 0, "noise": 0, "time": 0}, "goal": {"level": LIT}}'.replace("LIT", literal)
    r = client.post("/v1/act", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "goal.level"


def test_bad_feedback_is_4xx_naming_the_field(client: TestClient) -> None:
    d = act(client)
    r = client.post("/v1/feedback", json={"decision_id": "no-such-decision", "next_state": STATE}, headers=auth())
    assert r.status_code == 404 and r.json()["error"]["field"] == "decision_id"
    r = client.post(
        "/v1/feedback", json={"decision_id": d["decision_id"], "next_state": {"level": 1.0}}, headers=auth()
    )
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("next_state.")
    r = client.post("/v1/feedback", content=b"{not json", headers={**auth(), "content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/act:batch", json={"items": [{"state": STATE}, {"state": {"level": 1.0}}]})
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("items[1].state.")


# -- auth ----------------------------------------------------------------------------------------------------------
GUARDED = [
    ("POST", "/v1/feedback", {"decision_id": "x", "next_state": STATE}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/models/local/promote", None),
    ("POST", "/v1/models/rollback", None),
    ("POST", "/v1/finetune", None),
]


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_guarded_routes_refuse_missing_and_wrong_keys(client: TestClient, method: str, path: str, body: object) -> None:
    r = client.request(method, path, json=body)
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
    r = client.request(method, path, json=body, headers={"X-API-Key": KEY + "x"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"


def test_act_is_open_by_default_and_guarded_when_configured(settings: ServingSettings) -> None:
    guarded = settings.model_copy(update={"protect_act": True})
    with TestClient(create_app(guarded)) as c:
        assert c.post("/v1/act", json={"state": STATE}).status_code == 401
        assert c.post("/v1/act:batch", json={"items": [{"state": STATE}]}).status_code == 401
        assert c.post("/v1/act", json={"state": STATE}, headers={"X-API-Key": "wrong"}).status_code == 403
        assert c.post("/v1/act", json={"state": STATE}, headers=auth()).status_code == 200


def test_without_configured_keys_guarded_routes_stay_closed(settings: ServingSettings) -> None:
    with TestClient(create_app(settings.model_copy(update={"api_keys": ""}))) as c:
        r = c.get("/v1/models", headers={"X-API-Key": ""})
        assert r.status_code == 401 and "DECISION_CORE_SERVE_API_KEYS" in r.json()["error"]["message"]


# -- hooks ---------------------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.decisions: list[str] = []
        self.feedback: list[tuple[str, int]] = []

    def on_decision(self, *, decisions: list[dict]) -> None:  # takes a subset of the hook's arguments
        self.decisions += [d["decision_id"] for d in decisions]

    def on_feedback(self, *, decision_id: str, step: int, **rest: object) -> None:
        self.feedback.append((decision_id, step))


class Broken:
    def on_decision(self, **kwargs: object) -> None:
        raise RuntimeError("this hook always fails")

    def before_promote(self, **kwargs: object) -> bool:
        return False


def test_hooks_see_decisions_and_feedback_and_a_failing_hook_is_isolated(settings: ServingSettings) -> None:
    hooks = HookManager()
    recorder = Recorder()
    hooks.register(recorder, name="recorder")
    hooks.register(Broken(), name="broken")
    with TestClient(create_app(settings, hooks=hooks)) as c:
        d = act(c)
        feedback(c, d["decision_id"], 1.0)
        hooks.stop()  # drains the hook thread
        metrics = c.get("/metrics").text
    assert recorder.decisions == [d["decision_id"]]
    assert recorder.feedback == [(d["decision_id"], 0)]
    assert 'decision_core_hook_errors_total{hook="on_decision"} 1.0' in metrics


def test_hook_plugins_are_validated_when_registered() -> None:
    hooks = HookManager()

    class Nothing:
        pass

    class WantsUnknown:
        def on_feedback(self, *, decision_id: str, colour: str) -> None: ...

    class Positional:
        def on_feedback(self, decision_id: str, /) -> None: ...

    for plugin in (Nothing(), WantsUnknown(), Positional()):
        with pytest.raises(RegistryError):
            hooks.register(plugin)
    hooks.register(Recorder(), name="r")
    with pytest.raises(RegistryError, match="already registered"):
        hooks.register(Recorder(), name="r")


# -- models --------------------------------------------------------------------------------------------------------
def _add_candidate(client: TestClient, tmp: Path, version: str, spec: DomainSpec | None = None) -> Path:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    champion = ctx.catalog.champion.agent
    spec = spec or champion.spec
    other = create_agent("gcbc", spec, champion.stats, {"hidden_dims": [16], "batch_size": 8}, seed=7)
    path = other.save(tmp / version)
    ctx.catalog.add_candidate(CatalogEntry(version=version, status="candidate", source=str(path), agent_dir=path))
    return path


def test_promote_hot_swaps_and_rollback_restores(client: TestClient, tmp_path: Path) -> None:
    _add_candidate(client, tmp_path, "v2")
    r = client.post("/v1/models/v2/promote", headers=auth())
    assert r.status_code == 200, r.text
    assert r.json() == {"champion": {"name": "walk", "version": "v2"}, "previous": {"name": "walk", "version": "local"}}
    assert act(client)["model"]["version"] == "v2"
    models = {m["version"]: m["status"] for m in client.get("/v1/models", headers=auth()).json()["models"]}
    assert models == {"local": "retired", "v2": "champion"}
    r = client.post("/v1/models/rollback", headers=auth())
    assert r.status_code == 200 and r.json()["champion"]["version"] == "local"
    assert act(client)["model"]["version"] == "local"
    assert client.post("/v1/models/rollback", headers=auth()).status_code == 409
    assert client.post("/v1/models/nope/promote", headers=auth()).status_code == 404


def test_a_model_of_the_same_steps_may_replace_the_champion_and_one_of_other_steps_may_not(
    client: TestClient, tmp_path: Path
) -> None:
    import dataclasses

    spec = client.app.state.ctx.catalog.champion.agent.spec  # type: ignore[attr-defined]
    # Trained after the domain named its OPE estimator and another goal: the same steps, so it may serve.
    _add_candidate(client, tmp_path, "v2", dataclasses.replace(spec, ope_estimator="mb", goals={}))
    assert client.post("/v1/models/v2/promote", headers=auth()).status_code == 200
    _add_candidate(client, tmp_path, "v3", dataclasses.replace(spec, reward="-next.level"))
    r = client.post("/v1/models/v3/promote", headers=auth())
    assert r.status_code == 409 and "was trained for another domain spec than the one served" in r.text


def test_a_before_promote_hook_can_veto(settings: ServingSettings, tmp_path: Path) -> None:
    hooks = HookManager()
    hooks.register(Broken(), name="veto")
    with TestClient(create_app(settings, hooks=hooks)) as c:
        _add_candidate(c, tmp_path, "v2")
        r = c.post("/v1/models/v2/promote", headers=auth())
        assert r.status_code == 409 and "vetoed" in r.json()["error"]["message"]
        assert act(c)["model"]["version"] == "local"


def test_finetune_without_new_feedback_is_a_conflict(client: TestClient) -> None:
    r = client.post("/v1/finetune", headers=auth())
    assert r.status_code == 409 and "no new feedback" in r.json()["error"]["message"]


def _serve_episodes(client: TestClient, first: int, n: int, steps: int = 1) -> None:
    for i in range(first, first + n):
        for _ in range(steps):
            feedback(client, act(client, episode_id=f"ep{i}")["decision_id"], 1.0)


def test_finetune_is_refused_until_the_guard_can_judge_the_episodes(
    settings: ServingSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.finetune import FineTuner

    started: list[str] = []  # the worker is not run here: the route's answer is what is tested
    monkeypatch.setattr(FineTuner, "_supervise", lambda self, record, steps: started.append(record.run))
    with TestClient(create_app(settings)) as c:
        _serve_episodes(c, 0, 4, steps=2)
        r = c.post("/v1/finetune", headers=auth())
        assert r.status_code == 409, r.text
        message = r.json()["error"]["message"]
        assert "4 served episodes" in message and "at least 10" in message and "6 more" in message, message
        assert not started
        _serve_episodes(c, 4, 6)
        r = c.post("/v1/finetune", headers=auth())
        assert r.status_code == 202, r.text
        assert r.json()["new_feedback"] == 14 and len(started) == 1


def test_automatic_finetunes_wait_for_enough_episodes(
    settings: ServingSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.finetune import FineTuner

    started: list[str] = []
    monkeypatch.setattr(FineTuner, "_supervise", lambda self, record, steps: started.append(record.run))
    with TestClient(create_app(settings.model_copy(update={"finetune_every": 1}))) as c:
        _serve_episodes(c, 0, 3, steps=3)
        assert not started
        _serve_episodes(c, 3, 7)
        c.app.state.ctx.finetuner.wait(10)  # type: ignore[attr-defined]
        assert len(started) == 1


def test_the_guard_needs_no_fewer_episodes_than_effective_episodes_by_default() -> None:
    # An estimate rests on at most as many effective episodes as there are episodes (mb and fqe: exactly as many).
    fields = ServingSettings.model_fields
    assert fields["finetune_min_episodes"].default >= fields["finetune_min_ess"].default


# -- service -------------------------------------------------------------------------------------------------------
def test_health_metrics_and_openapi(client: TestClient) -> None:
    d = act(client)
    feedback(client, d["decision_id"], 1.0)
    assert client.get("/healthz").json()["status"] == "ok"
    text = client.get("/metrics").text
    assert 'decision_core_http_requests_total{method="POST",route="/v1/act",status="200"} 1.0' in text
    assert 'decision_core_decisions_total{model_version="local"} 1.0' in text
    assert 'decision_core_feedback_total{outcome="stored"} 1.0' in text
    assert "decision_core_http_request_duration_seconds_bucket" in text
    ops = {op["operationId"] for path in client.get("/openapi.json").json()["paths"].values() for op in path.values()}
    assert {
        "act",
        "act_batch",
        "feedback",
        "list_models",
        "promote_model",
        "rollback_model",
        "start_finetune",
        "health",
        "metrics",
    } <= ops


def test_the_served_agent_is_the_saved_one(client: TestClient, agent_dir: Path) -> None:
    saved = load_agent(agent_dir)
    states = np.array([[0.0, 0.1, 0.0]], np.float32)
    goals, mask = np.array([[3.0]], np.float32), np.array([[True]])
    want = int(saved.act(states, goals, mask, rng=np.random.default_rng(0)).actions[0])
    got = act(client, goal={"level": 3.0}, exploration={"greedy": True})["action"]["index"]
    assert got == want
    assert json.loads((agent_dir / "agent.json").read_text())["algo"] == "gcbc"


# -- inference paths -------------------------------------------------------------------------------------------------
def test_large_batches_and_torch_only_agents_are_served_off_the_event_loop(
    client: TestClient, settings: ServingSettings, tmp_path: Path
) -> None:
    # 200 decisions exceed what one pass may take on the event loop: they go through the inference thread.
    items = [{"state": {**STATE, "level": float(i % 9)}, "request_id": f"b{i}"} for i in range(200)]
    r = client.post("/v1/act:batch", json={"items": items})
    assert r.status_code == 200, r.text
    assert [d["request_id"] for d in r.json()["decisions"]] == [f"b{i}" for i in range(200)]
    # A hierarchical agent has no numpy copy: every pass runs through torch on the inference thread.
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    champion = ctx.catalog.champion.agent
    hiql = create_agent("hiql", champion.spec, champion.stats, {"hidden_dims": [16], "batch_size": 8})
    path = hiql.save(tmp_path / "hiql")
    with TestClient(create_app(settings.model_copy(update={"model": str(path), "home": tmp_path / "h2"}))) as c:
        assert c.app.state.ctx.catalog.champion.fast is None  # type: ignore[attr-defined]
        saved = load_agent(path)
        want = int(saved.act(np.array([[0.0, 0.1, 0.0]], np.float32), rng=np.random.default_rng(0)).actions[0])
        assert act(c, exploration={"greedy": True})["action"]["index"] == want
        assert 0.0 < act(c)["propensity"] <= 1.0


# -- the audit's rules -----------------------------------------------------------------------------------------------
def _serve(
    settings: ServingSettings, tmp_path: Path, algo: str, config: dict | None = None, **spec_changes: object
) -> TestClient:
    """An app around a fresh ``algo`` agent (with ``config``) of the walk spec (with ``spec_changes``), on its own
    store."""
    import dataclasses

    from decision_core.data.dataset import FeatureStats

    from .conftest import walk_spec

    spec = dataclasses.replace(walk_spec(), **spec_changes)
    agent = create_agent(
        algo, spec, FeatureStats.identity(spec), {"hidden_dims": [16], "batch_size": 8, **(config or {})}
    )
    path = agent.save(tmp_path / f"{algo}-agent")
    return TestClient(create_app(settings.model_copy(update={"model": str(path), "home": tmp_path / f"h-{algo}"})))


def test_feedback_without_a_reward_is_refused_where_the_domain_trains_on_logged_rewards(
    settings: ServingSettings, tmp_path: Path
) -> None:
    with _serve(settings, tmp_path, "gcbc", reward="logged") as c:
        d = act(c)
        body = {"decision_id": d["decision_id"], "next_state": STATE}
        r = c.post("/v1/feedback", json=body, headers=auth())
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["field"] == "reward" and "'logged'" in err["message"] and "walk" in err["message"], err
        assert feedback(c, d["decision_id"], 1.0, reward=0.5)["status"] == "stored"
    # A reward model trained on the logged rewards needs them too (its fine-tunes do), whatever the spec says.
    with _serve(settings, tmp_path, "iql", config={"reward": "logged"}) as c:
        d = act(c)
        r = c.post("/v1/feedback", json={"decision_id": d["decision_id"], "next_state": STATE}, headers=auth())
        assert r.status_code == 422 and r.json()["error"]["field"] == "reward", r.text
    # One learned from an expression does not.
    with _serve(settings, tmp_path / "expr", "iql", config={"reward": "-next.level"}) as c:
        assert feedback(c, act(c)["decision_id"], 1.0)["status"] == "stored"


def test_a_terminated_episode_takes_no_later_decisions_or_outcomes(settings: ServingSettings) -> None:
    with TestClient(create_app(settings)) as c:
        before = act(c, episode_id="f2")  # asked for before the episode ended
        first = act(c, episode_id="f2")
        assert feedback(c, first["decision_id"], 1.0, terminated=True)["step"] == 0
        r = c.post("/v1/act", json={"state": STATE, "episode_id": "f2"})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["field"] == "episode_id" and "'f2'" in err["message"] and "new episode id" in err["message"], err
        items = [{"state": STATE, "episode_id": "other"}, {"state": STATE, "episode_id": "f2"}]
        r = c.post("/v1/act:batch", json={"items": items})
        assert r.status_code == 409 and r.json()["error"]["field"] == "items[1].episode_id", r.text
        body = {"decision_id": before["decision_id"], "next_state": STATE}
        r = c.post("/v1/feedback", json=body, headers=auth())
        assert r.status_code == 409, r.text
        assert "'f2'" in r.json()["error"]["message"] and "terminated" in r.json()["error"]["message"]
        assert [(e, s) for e, s, *_ in stored_steps(c)] == [("served/f2", 0)]
        assert act(c, episode_id="f3")["episode_id"] == "f3"
    with TestClient(create_app(settings)) as c:  # a restart remembers which episodes ended
        r = c.post("/v1/act", json={"state": STATE, "episode_id": "f2"})
        assert r.status_code == 409, r.text


def test_an_episode_continues_after_a_truncated_step_which_then_no_longer_ends_it(client: TestClient) -> None:
    d0 = act(client, episode_id="t")
    assert feedback(client, d0["decision_id"], 1.0, truncated=True)["step"] == 0
    d1 = act(client, episode_id="t")
    assert feedback(client, d1["decision_id"], 2.0, truncated=True)["step"] == 1
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    rows = ctx.writer.call(
        lambda s: s.con.execute("SELECT step, truncated FROM steps_walk ORDER BY step").fetchall()
    ).result()
    assert rows == [(0, False), (1, True)]  # as ingest does: a continued cut is no longer a cut
    arrays = ctx.writer.call(lambda s: s.load_arrays("walk")).result()
    assert arrays.n_episodes == 1 and arrays.truncated.tolist() == [False, True]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"state": {**STATE, "level": "12"}}, "state.level"),
        ({"state": {**STATE, "level": True}}, "state.level"),
        ({"state": STATE, "goal": {"level": "3"}}, "goal.level"),
        ({"state": STATE, "step": "3"}, "step"),
        ({"state": STATE, "step": 3.0}, "step"),
        ({"state": STATE, "action_mask": [1, 1, 1]}, "action_mask[0]"),
        ({"state": STATE, "exploration": {"greedy": "yes"}}, "exploration.greedy"),
        ({"state": STATE, "exploration": {"epsilon": "0.1"}}, "exploration.epsilon"),
    ],
)
def test_decision_fields_are_strictly_typed(client: TestClient, body: dict, field: str) -> None:
    r = client.post("/v1/act", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field, r.text


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"terminated": "yes"}, "terminated"),
        ({"truncated": 1}, "truncated"),
        ({"reward": "1.5"}, "reward"),
        ({"next_state": {**STATE, "level": "1"}}, "next_state.level"),
    ],
)
def test_feedback_fields_are_strictly_typed(client: TestClient, extra: dict, field: str) -> None:
    d = act(client)
    body = {"decision_id": d["decision_id"], "next_state": STATE, **extra}
    r = client.post("/v1/feedback", json=body, headers=auth())
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field, r.text


def test_a_retry_must_repeat_the_stored_outcome(settings: ServingSettings) -> None:
    with TestClient(create_app(settings)) as c:
        d = act(c, episode_id="r")
        feedback(c, d["decision_id"], 1.0, reward=0.5)
        assert feedback(c, d["decision_id"], 1.0, reward=0.5)["status"] == "already_stored"
        for extra, field in (
            ({"reward": 0.7}, "reward"),
            ({}, "reward"),  # the stored one had a reward
            ({"reward": 0.5, "terminated": True}, "terminated"),
            ({"reward": 0.5, "truncated": True}, "truncated"),
            ({"reward": 0.5, "next_state": {"level": 2.0, "noise": 0.0, "time": 1.0}}, "next_state"),
        ):
            body = {"decision_id": d["decision_id"], "next_state": {"level": 1.0, "noise": 0.0, "time": 1.0}, **extra}
            r = c.post("/v1/feedback", json=body, headers=auth())
            assert r.status_code == 409, (extra, r.text)
            err = r.json()["error"]
            assert err["field"] == field and d["decision_id"] in err["message"], err
        assert len(stored_steps(c)) == 1
    with TestClient(create_app(settings)) as c:  # compared with the store after a restart too
        assert feedback(c, d["decision_id"], 1.0, reward=0.5)["status"] == "already_stored"
        body = {"decision_id": d["decision_id"], "next_state": {"level": 1.0, "noise": 0.0, "time": 1.0}}
        r = c.post("/v1/feedback", json={**body, "reward": 0.25}, headers=auth())
        assert r.status_code == 409 and r.json()["error"]["field"] == "reward", r.text


def test_a_batch_naming_an_episode_twice_is_refused_in_every_domain(client: TestClient) -> None:
    assert not client.app.state.ctx.catalog.spec.once_per_episode  # type: ignore[attr-defined]
    items = [{"state": STATE, "episode_id": "e"}, {"state": STATE}, {"state": STATE, "episode_id": "e"}]
    r = client.post("/v1/act:batch", json={"items": items})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "items[2].episode_id" and "items[0]" in err["message"] and "'e'" in err["message"], err


def test_malformed_json_is_reported_alike_on_every_route(client: TestClient) -> None:
    answers = []
    for path in ("/v1/act", "/v1/act:batch", "/v1/feedback", "/v1/finetune"):
        r = client.post(path, content=b'{"steps":', headers={**auth(), "content-type": "application/json"})
        assert r.status_code == 422, (path, r.text)
        err = r.json()["error"]
        answers.append((err["field"], err["message"].split(" (")[0]))
    assert set(answers) == {("body", "body: invalid JSON")}, answers


def test_a_goal_or_task_sent_to_a_reward_model_is_refused_naming_what_was_sent(
    settings: ServingSettings, tmp_path: Path
) -> None:
    with _serve(settings, tmp_path, "bc") as c:
        for extra, field in (({"task": "high"}, "task"), ({"goal": {"level": 1.0}}, "goal")):
            r = c.post("/v1/act", json={"state": STATE, **extra})
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["field"] == field and err["message"].startswith(f"{field}: the served model 'bc'"), err
        assert act(c, task="reward")["propensity"] > 0


def test_bodies_over_the_limit_are_refused_with_413(settings: ServingSettings) -> None:
    with TestClient(create_app(settings.model_copy(update={"max_body_bytes": 2000}))) as c:
        big = b'{"state": {"level": 0, "noise": 0, "time": 0}}' + b" " * 3000
        for path in ("/v1/act", "/v1/finetune"):
            r = c.post(path, content=big, headers={**auth(), "content-type": "application/json"})
            assert r.status_code == 413, r.text
            err = r.json()["error"]
            assert (
                err["type"] == "payload_too_large" and "2000" in err["message"] and "MAX_BODY_BYTES" in err["message"]
            ), err

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit counts what is read
            yield b'{"state": {"level": 0, "noise": 0, "time": 0}}'
            for _ in range(10):
                yield b" " * 500

        r = c.post("/v1/act", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert act(c)["propensity"] > 0  # within the limit


def test_the_api_keys_setting_says_what_serve_does_without_keys() -> None:
    from serving.cli import serve_cmd

    described = ServingSettings.model_fields["api_keys"].description or ""
    assert "refuse every call" not in described
    assert "<home>/serving/api_key" in described and "<home>/serving/api_key" in (serve_cmd.__doc__ or "")


def test_a_goal_model_without_a_goal_acts_as_asked_for_no_outcome(client: TestClient, agent_dir: Path) -> None:
    saved = load_agent(agent_dir)
    states = np.array([[float(level), 0.1, 0.0] for level in range(-3, 4)], np.float32)
    nothing = np.full((len(states), 1), np.nan, np.float32)
    want = saved.act(states, nothing, np.zeros_like(nothing, np.bool_), rng=np.random.default_rng(0)).actions
    for extra in ({}, {"goal": {}}):
        got = [
            act(client, state={"level": s[0], "noise": 0.1, "time": 0.0}, exploration={"greedy": True}, **extra)
            for s in states.tolist()
        ]
        assert [d["action"]["index"] for d in got] == [int(a) for a in want]
