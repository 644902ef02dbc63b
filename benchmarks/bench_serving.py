"""Serving throughput and latency with a real uvicorn server and an asyncio load client.

Measured in one run, on the same machine and the same uvicorn configuration:

- baseline: a bare FastAPI app whose POST endpoint returns a constant (same request body size as /v1/act);
- ``/v1/act``: p50/p99 latency and req/s at 1, 16 and 64 concurrent keep-alive clients next to the baseline's,
  and req/s as a ratio to the baseline at the same concurrency (target >= 0.8x);
- ``/v1/act:batch``: decisions/s with 1000-decision calls (target >= 20k/s);
- ``/v1/feedback``: durable events/s at 64 concurrent clients (each answer waits for the group commit; target
  >= 2k/s).

The load client is one process (a bare asyncio protocol on uvloop when installed) sharing the machine's cores
with the servers. The model is a fresh GCBC agent with the default network (2x256) on the inventory domain's
spec. Figures are medians over ``--repeats`` windows of ``--seconds`` each.

    python -m benchmarks.bench_serving [--seconds 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table

KEY = "bench-key"
T = TypeVar("T")
console = Console()

_BARE_APP = """
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()

class Body(BaseModel):
    state: dict[str, float]
    goal: dict[str, float] | None = None

@app.post("/v1/act")
async def act(body: Body) -> dict:
    return {"decision_id": "x", "action": {"index": 0, "label": "a"}, "propensity": 1.0}
"""


# -- servers -------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def start_bare(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    (work / "bare_app.py").write_text(_BARE_APP)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=work,
    )
    wait_healthy(port, "/docs", proc)
    return proc, port


def start_service(work: Path, model: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DECISION_CORE_")},
        "DECISION_CORE_HOME": str(work / "home"),
        "DECISION_CORE_SERVE_API_KEYS": KEY,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "DECISION_CORE_THREADS": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "decision_core",
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    wait_healthy(port, "/healthz", proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- the load client -----------------------------------------------------------------------------------------------
class Connection(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client on a bare asyncio protocol (no stream objects, one future per
    request), so the client costs little next to the server it measures; both share this machine's cores."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, "127.0.0.1", self.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status, payload = int(head[9:12]), bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        if not self.waiter.done():
            self.waiter.set_result((status, payload))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    async def post(self, path: str, body: bytes, headers: str = "") -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run the load client on uvloop (when installed, as with ``uvicorn[standard]``), like the servers."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def load(
    port: int, path: str, make_body: Callable[[int, int], bytes], concurrency: int, seconds: float, headers: str = ""
) -> tuple[int, list[float], list[bytes]]:
    """Requests completed, their latencies and bodies, from ``concurrency`` clients over ``seconds``."""
    latencies: list[float] = []
    bodies: list[bytes] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(worker: int) -> None:
        nonlocal errors
        conn = Connection(port)
        await conn.open()
        i = 0
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                status, payload = await conn.post(path, make_body(worker, i), headers)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
                bodies.append(payload)
                i += 1
        finally:
            conn.close()

    await asyncio.gather(*(client(w) for w in range(concurrency)))
    if errors:
        raise RuntimeError(f"{errors} requests to {path} failed; first body: {bodies[0][:300]!r}")
    return len(latencies), latencies, bodies


# -- the benchmark -------------------------------------------------------------------------------------------------
def make_model(work: Path) -> tuple[Path, object]:
    from decision_core.algos import create_agent
    from decision_core.envs import get_simulator

    sim = get_simulator("inventory")
    spec = sim.spec()
    agent = create_agent("gcbc", spec)
    return agent.save(work / "agent"), sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one measurement window")
    parser.add_argument("--repeats", type=int, default=3, help="windows per figure (the median is reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[1, 16, 64],
        help="concurrent clients of the /v1/act figures (default: 1 16 64)",
    )
    parser.add_argument(
        "--act-only", action="store_true", help="measure /v1/act only (skip the act:batch and feedback figures)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        model, sim = make_model(work)
        spec = sim.spec()  # type: ignore[attr-defined]
        rng = np.random.default_rng(0)
        obs = sim.dynamics().reset(rng, 256)  # type: ignore[attr-defined]
        states = [dict(zip(spec.state_names, map(float, row), strict=True)) for row in obs]
        goal = sim.goal_set()[0].targets  # type: ignore[attr-defined]
        act_bodies = [json.dumps({"state": s, "goal": goal}).encode() for s in states]

        def act_body(w: int, i: int) -> bytes:
            return act_bodies[(w * 7919 + i) % len(act_bodies)]

        figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}
        bare_proc, bare_port = start_bare(work)
        svc_proc, svc_port = start_service(work, model)
        try:
            rows = []
            for conc in args.clients:
                base_rates, rates, p50s, p99s, base_p50s, base_p99s = [], [], [], [], [], []
                for _ in range(args.repeats):
                    # Alternate baseline and service windows so machine noise hits both alike.
                    n, lat, _ = run(load(bare_port, "/v1/act", act_body, conc, args.seconds))
                    base_rates.append(n / args.seconds)
                    base_p50s.append(float(np.percentile(lat, 50)) * 1e3)
                    base_p99s.append(float(np.percentile(lat, 99)) * 1e3)
                    n, lat, _ = run(load(svc_port, "/v1/act", act_body, conc, args.seconds))
                    rates.append(n / args.seconds)
                    p50s.append(float(np.percentile(lat, 50)) * 1e3)
                    p99s.append(float(np.percentile(lat, 99)) * 1e3)
                base, rate = statistics.median(base_rates), statistics.median(rates)
                rows.append(
                    (
                        conc,
                        statistics.median(p50s),
                        statistics.median(p99s),
                        rate,
                        statistics.median(base_p50s),
                        statistics.median(base_p99s),
                        base,
                        rate / base,
                    )
                )
                console.print(f"/v1/act x{conc}: {rate:,.0f} req/s vs bare {base:,.0f} ({rate / base:.2f}x)")
            figures["act"] = [
                {
                    "concurrency": c,
                    "p50_ms": a,
                    "p99_ms": b,
                    "req_s": r,
                    "bare_p50_ms": ba,
                    "bare_p99_ms": bb,
                    "bare_req_s": br,
                    "ratio": x,
                }
                for c, a, b, r, ba, bb, br, x in rows
            ]

            if not args.act_only:
                batch_and_feedback(svc_port, states, goal, figures, args)
        finally:
            stop(svc_proc)
            stop(bare_proc)
    report(figures, args.json)


def batch_and_feedback(
    svc_port: int, states: list[dict[str, float]], goal: dict[str, float], figures: dict[str, Any], args: Any
) -> None:
    """``/v1/act:batch`` decisions/s and durable ``/v1/feedback`` events/s into ``figures``."""
    batch = 1000
    batch_bodies = [
        json.dumps({"items": [{"state": states[(k + j) % len(states)], "goal": goal} for j in range(batch)]}).encode()
        for k in range(8)
    ]
    batch_rates = []
    for _ in range(args.repeats):
        n, _, _ = run(load(svc_port, "/v1/act:batch", lambda w, i: batch_bodies[(w + i) % 8], 4, args.seconds))
        batch_rates.append(n * batch / args.seconds)
    figures["act_batch_decisions_s"] = statistics.median(batch_rates)
    console.print(f"/v1/act:batch: {figures['act_batch_decisions_s']:,.0f} decisions/s")

    # Feedback: decisions first (not timed), then each of them gets one outcome.
    ids: list[str] = []
    next_states = [json.dumps(s) for s in states]

    async def make_decisions(count: int) -> None:
        conn = Connection(svc_port)
        await conn.open()
        while len(ids) < count:
            _, payload = await conn.post("/v1/act:batch", batch_bodies[len(ids) // batch % 8])
            ids.extend(d["decision_id"] for d in json.loads(payload)["decisions"])
        conn.close()

    run(make_decisions(200_000))
    cursor = iter(range(len(ids)))

    def feedback_body(w: int, i: int) -> bytes:
        k = next(cursor)
        return (
            f'{{"decision_id": "{ids[k]}", "next_state": {next_states[k % len(next_states)]}, "reward": 1.0}}'
        ).encode()

    fb_rates = []
    for _ in range(args.repeats):
        n, _, bodies = run(load(svc_port, "/v1/feedback", feedback_body, 64, args.seconds, f"X-API-Key: {KEY}\r\n"))
        assert all(b'"stored"' in b for b in bodies[:50])
        fb_rates.append(n / args.seconds)
    figures["feedback_events_s"] = statistics.median(fb_rates)
    console.print(f"/v1/feedback: {figures['feedback_events_s']:,.0f} durable events/s")


def report(figures: dict[str, Any], json_path: Path | None) -> None:
    table = Table(title="serving (median of windows)")
    for col in ("clients", "p50 ms", "p99 ms", "req/s", "bare p50", "bare p99", "bare req/s", "ratio (target >= 0.8x)"):
        table.add_column(col, justify="right")
    for r in figures["act"]:  # type: ignore[attr-defined]
        table.add_row(
            str(r["concurrency"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['req_s']:,.0f}",
            f"{r['bare_p50_ms']:.2f}",
            f"{r['bare_p99_ms']:.2f}",
            f"{r['bare_req_s']:,.0f}",
            f"{r['ratio']:.2f}x",
        )
    console.print(table)
    if "act_batch_decisions_s" in figures:
        console.print(f"/v1/act:batch decisions/s: {figures['act_batch_decisions_s']:,.0f} (target >= 20,000)")
    if "feedback_events_s" in figures:
        console.print(f"/v1/feedback durable events/s: {figures['feedback_events_s']:,.0f} (target >= 2,000)")
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
