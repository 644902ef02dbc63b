"""Prometheus metrics of one app (its own registry, so apps and tests never share counters).

Request counts and latencies come from a pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware)
labelled by the matched route template, never the raw path, so label cardinality stays bounded.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServingMetrics:
    """Every metric the service exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "decision_core_http_requests",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "decision_core_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "decision_core_decisions", "Decisions served, by model version.", ["model_version"], registry=r
        )
        self.feedback = Counter(
            "decision_core_feedback",
            "Feedback events by outcome (stored, already_stored, rejected).",
            ["outcome"],
            registry=r,
        )
        self.finetune_runs = Counter(
            "decision_core_finetune_runs",
            "Fine-tune runs by result (promoted, rejected, failed).",
            ["result"],
            registry=r,
        )
        self.hook_errors = Counter("decision_core_hook_errors", "Hook calls that raised.", ["hook"], registry=r)
        self.write_groups = Histogram(
            "decision_core_writer_group_items",
            "Items committed per writer group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "decision_core_writer_commit_seconds",
            "Duration of one writer group commit.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.write_errors = Counter("decision_core_writer_errors", "Failed writer group commits.", registry=r)
        self.pending_writes = Gauge("decision_core_writer_pending", "Items waiting for the writer.", registry=r)
        self.inference_batch = Histogram(
            "decision_core_inference_batch_size",
            "Decisions per model forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096),
            registry=r,
        )
        self.model_info = Gauge(
            "decision_core_model_info", "The champion being served (value 1).", ["name", "version"], registry=r
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts requests and observes their latency by (method, route template, status)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # Label children by (method, route, status): ``labels()`` takes a lock and builds keys on every call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "?")
            key = (method, template, status[0])
            children = self._children.get(key)
            if children is None:
                children = (
                    self.metrics.requests.labels(method, template, str(status[0])),
                    self.metrics.latency.labels(method, template),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)
