"""The feedback writer: joins outcomes with their decisions whether the decision is still cached or only stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from decision_core.schema import DomainSpec
from decision_core.store import DecisionStore
from serving.feedback import DecisionBlock, FeedbackEvent, FeedbackWriter


def _block(spec: DomainSpec, ids: list[str], episodes: list[str | None], first_level: float) -> DecisionBlock:
    n = len(ids)
    states = np.zeros((n, spec.state_dim), np.float32)
    states[:, 0] = first_level + np.arange(n)
    return DecisionBlock(
        ids=ids,
        episode_ids=[e or d for e, d in zip(episodes, ids, strict=True)],
        steps=[None] * n,
        request_ids=[None] * n,
        tasks=[None] * n,
        states=states,
        goals=np.full((n, len(spec.outcomes)), np.nan, np.float32),
        actions=np.arange(n, dtype=np.float32).reshape(n, 1) % spec.n_actions,
        action_masks=None,
        propensities=np.full(n, 0.25),
        epsilon=0.1,
        temperature=None,
        model_name="walk",
        model_version="7",
    )


def _event(spec: DomainSpec, did: str) -> FeedbackEvent:
    return FeedbackEvent(
        decision_id=did, next_state=np.ones(spec.state_dim, np.float32), reward=1.0, terminated=False, truncated=False
    )


def test_feedback_joins_decisions_evicted_from_the_cache(tmp_path: Path, spec: DomainSpec) -> None:
    with DecisionStore(tmp_path / "store.duckdb") as store:
        writer = FeedbackWriter(store, spec, cache_max=4, decision_linger_s=0.01).start()
        try:
            # Ten decisions through a four-slot cache: the first ones are only in the store when feedback comes.
            writer.add_decisions(_block(spec, ["d0", "d1", "d2"], ["run", "run", None], 0.0))
            writer.add_decisions(_block(spec, ["d3", "d4", "d5"], [None, "run", None], 10.0))
            writer.add_decisions(_block(spec, ["d6", "d7", "d8", "d9"], [None, None, None, "run"], 20.0))
            results = {}
            for did in ["d9", "d0", "d4", "d1", "d2", "d8"]:
                results[did] = writer.add_feedback(_event(spec, did)).result(10)
            again = writer.add_feedback(_event(spec, "d0")).result(10)
            rows = writer.call(
                lambda s: s.con.execute(
                    "SELECT episode_id, step, state[1], action[1], propensity, adapter_version FROM steps_walk "
                    "ORDER BY episode_id, step"
                ).fetchall()
            ).result(10)
        finally:
            writer.close()
    # The caller's episode is numbered densely in feedback order, cached (d9, d4) or not (d0, d1).
    assert [(results[d].episode_id, results[d].step) for d in ["d9", "d0", "d4", "d1"]] == [
        ("served/run", 0),
        ("served/run", 1),
        ("served/run", 2),
        ("served/run", 3),
    ]
    # A decision's own episode starts at 0, whether it was cached (d8) or not (d2).
    assert (results["d2"].episode_id, results["d2"].step) == ("served/d2", 0)
    assert (results["d8"].episode_id, results["d8"].step) == ("served/d8", 0)
    assert (again.status, again.episode_id, again.step) == ("already_stored", "served/run", 1)
    by_key = {(e, s): rest for e, s, *rest in rows}
    assert len(rows) == 6
    # Each row carries its own decision's state, action, propensity and model version.
    assert by_key[("served/run", 0)] == [pytest.approx(23.0), 3.0 % spec.n_actions, 0.25, "7"]
    assert by_key[("served/run", 1)] == [pytest.approx(0.0), 0.0, 0.25, "7"]
    assert by_key[("served/run", 2)][0] == pytest.approx(11.0)
    assert by_key[("served/d2", 0)][0] == pytest.approx(2.0)
    assert by_key[("served/d8", 0)][0] == pytest.approx(22.0)
