"""Decisions in domains that allow each action once per episode: the server masks an episode's earlier actions."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from decision_core.schema import DiscreteActions, DomainSpec
from serving.app import create_app
from serving.errors import InvalidInput
from serving.policy import EpisodeActions, Prepared
from serving.schemas import ActRequest
from serving.settings import ServingSettings

KEY = "test-key-1"  # the key the conftest's settings configure


@pytest.fixture
def spec(spec: DomainSpec) -> DomainSpec:
    """The conftest's walk, but each move may be made once per episode (like a recommender's items)."""
    return replace(spec, actions=DiscreteActions(labels=("down", "stay", "up"), once_per_episode=True))


def act(client: TestClient, step: int, episode: str | None = "e1", **body: object) -> dict:
    payload = {"state": {"level": 0.0, "noise": 0.0, "time": float(step)}, "step": step, **body}
    if episode is not None:
        payload["episode_id"] = episode
    r = client.post("/v1/act", json=payload)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_episode_never_gets_an_action_twice_and_is_told_when_none_is_left(client: TestClient) -> None:
    taken = [act(client, t)["action"]["index"] for t in range(3)]
    assert sorted(taken) == [0, 1, 2]
    r = client.post("/v1/act", json={"state": {"level": 0.0, "noise": 0.0, "time": 3.0}, "episode_id": "e1"})
    assert r.status_code == 422
    assert "episode_id 'e1'" in r.text and "once per episode" in r.text
    # Other episodes, and requests that name no episode, are not affected.
    assert act(client, 0, "e2")["action"]["index"] in (0, 1, 2)
    assert all(act(client, 0, None)["action"]["index"] in (0, 1, 2) for _ in range(5))


def test_the_clients_mask_and_the_episodes_rule_combine(client: TestClient) -> None:
    first = act(client, 0, action_mask=[True, True, False])["action"]["index"]
    assert first in (0, 1)
    second = act(client, 1, action_mask=[True, True, False])["action"]["index"]
    assert second == 1 - first


def test_concurrent_requests_for_one_episode_get_different_actions(client: TestClient) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]

    async def three_at_once(episode: str) -> list[int]:
        # Started in one loop iteration: the second and third are decided together, after the first.
        body = {"state": {"level": 0.0, "noise": 0.0, "time": 0.0}, "episode_id": episode}
        prepared = [ctx.encoder.prepare(ctx.catalog.champion.agent, ActRequest.model_validate(body)) for _ in range(3)]
        decided = await asyncio.gather(*(ctx.batcher.decide([p]) for p in prepared))
        return [int(d.action[0]) for [d] in decided]

    for i in range(5):
        assert sorted(client.portal.call(three_at_once, f"race-{i}")) == [0, 1, 2]


def test_a_batch_naming_one_episode_twice_is_refused(client: TestClient) -> None:
    items = [{"state": {"level": 0.0, "noise": 0.0, "time": 0.0}, "episode_id": e} for e in ("a", "b", "a")]
    r = client.post("/v1/act:batch", json={"items": items})
    assert r.status_code == 422
    assert "items[0] and items[2] both name episode_id 'a'" in r.text
    assert len(client.app.state.ctx.batcher.episodes) == 0  # type: ignore[attr-defined]  # nothing was decided


def test_batch_requests_and_restarts_keep_the_rule(settings: ServingSettings) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        items = [{"state": {"level": 0.0, "noise": 0.0, "time": 0.0}, "episode_id": e, "step": 0} for e in "ab"]
        r = client.post("/v1/act:batch", json={"items": items})
        assert r.status_code == 200, r.text
        before = {d["episode_id"]: d["action"]["index"] for d in r.json()["decisions"]}
    # A new server on the same store reads the episodes under way from the logged decisions.
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for episode, earlier in before.items():
            assert act(client, 1, episode)["action"]["index"] != earlier


def test_served_episodes_load_as_training_data_whose_actions_were_available(client: TestClient) -> None:
    for t in range(3):
        d = act(client, t, "fed")
        body = {"decision_id": d["decision_id"], "next_state": {"level": 0.0, "noise": 0.0, "time": t + 1.0}}
        if t == 2:
            body["terminated"] = True
        r = client.post("/v1/feedback", json=body, headers={"X-API-Key": KEY})
        assert r.status_code == 200, r.text
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    arrays = ctx.writer.call(lambda s: s.load_arrays("walk")).result()
    assert arrays.n_steps == 3 and arrays.action_masks is not None
    taken = arrays.actions[:, 0].astype(int)
    assert sorted(taken.tolist()) == [0, 1, 2]
    assert arrays.action_masks[np.arange(3), taken].all()  # each logged action was available when taken


def _item(episode: str | None, mask: list[bool] | None = None) -> Prepared:
    return Prepared([0.0], [], None, mask, None, None, episode, None)


def test_episode_memory_forgets_the_least_recently_served_episode(spec: DomainSpec) -> None:
    memory = EpisodeActions(capacity=2)
    memory.add("a", 0)
    memory.add("b", 1)
    memory.add("a", 2)  # "a" is now the most recent
    memory.add("c", 0)  # over capacity: "b" goes
    assert len(memory) == 2
    [a, b, c, none] = memory.restrict([_item("a"), _item("b"), _item("c"), _item(None)], spec)
    assert a.action_mask == [False, True, False]
    assert b.action_mask is None and none.action_mask is None
    assert c.action_mask == [False, True, True]
    memory.add("c", 1)
    memory.add("c", 2)
    with pytest.raises(InvalidInput, match=r"items\[1\]\.episode_id 'c'"):
        memory.restrict([_item("a"), _item("c")], spec)


def test_a_restart_reloads_only_the_episodes_that_requests_named(settings: ServingSettings) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for _ in range(3):
            act(client, 0, None)  # no episode named: each decision is an episode of its own, nothing to remember
        act(client, 0, "named")
        assert len(client.app.state.ctx.batcher.episodes) == 1  # type: ignore[attr-defined]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert len(client.app.state.ctx.batcher.episodes) == 1  # type: ignore[attr-defined]
