"""The service in process: decisions, feedback joined into steps, validation, auth, hooks, models, metrics."""

from __future__ import annotations

import json
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
