"""kill -9 during a feedback load: after a restart every acknowledged event is in the store."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from decision_core.store import DecisionStore
from serving.feedback import feedback_table

KEY = "test-key-1"
STATE = {"level": 0.0, "noise": 0.1, "time": 0.0}


@pytest.mark.slow
def test_acknowledged_feedback_survives_kill_9(server_factory: Callable, spec) -> None:
    server = server_factory().start()
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        ids = []
        for t in range(30):  # 50 episodes of 30 steps: one batch per step (a batch names an episode once)
            items = [{"state": {**STATE, "level": float((t * 50 + e) % 7)}, "episode_id": f"ep{e}"} for e in range(50)]
            r = c.post("/v1/act:batch", json={"items": items})
            assert r.status_code == 200, r.text
            ids += [d["decision_id"] for d in r.json()["decisions"]]

    acked: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def send(chunk: list[str]) -> None:
        with httpx.Client(base_url=server.url, timeout=10.0, headers={"X-API-Key": KEY}) as c:
            for did in chunk:
                body = {"decision_id": did, "next_state": {**STATE, "level": 1.0}, "reward": 1.0}
                try:
                    r = c.post("/v1/feedback", json=body)
                except httpx.TransportError:
                    return  # the server is gone; this event was never acknowledged
                if r.status_code == 200:
                    with lock:
                        acked.append(did)
                        if len(acked) >= 300:
                            enough.set()

    threads = [threading.Thread(target=send, args=(ids[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    assert enough.wait(120), "the feedback load never reached 300 acknowledged events"
    server.kill()  # SIGKILL: no shutdown, no flush
    for t in threads:
        t.join(30)
    assert 300 <= len(acked) < len(ids), "the kill should land in the middle of the load"

    # Restart on the same store: acknowledged events are there (a retry is recognised as already stored).
    server.start()
    with httpx.Client(base_url=server.url, timeout=10.0, headers={"X-API-Key": KEY}) as c:
        for did in acked[:: max(1, len(acked) // 40)]:
            body = {"decision_id": did, "next_state": {**STATE, "level": 1.0}, "reward": 1.0}  # the same event
            r = c.post("/v1/feedback", json=body)
            assert r.status_code == 200 and r.json()["status"] == "already_stored", r.text
    server.stop()
    with DecisionStore(server.home / "store.duckdb", read_only=True) as store:
        stored = {row[0] for row in store.con.execute(f"SELECT decision_id FROM {feedback_table(spec)}").fetchall()}
        steps = store.count_steps(spec.name)
        arrays = store.load_arrays(spec.name)  # the served episodes read back as training data
    missing = [d for d in acked if d not in stored]
    assert not missing, f"{len(missing)} acknowledged events were lost, e.g. {missing[:3]}"
    assert steps == len(stored) and arrays.n_steps == steps
