"""The HTTP service: ``create_app(settings)`` builds a FastAPI app around one model and one decision store.

The model is loaded, the store opened and the writer, inference worker and fine-tuner started in the lifespan;
routes reach them through the ``Ctx`` dependency. See ``docs/serving.md`` for the API and the rules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader

from decision_core.store import DecisionStore
from serving.auth import HEADER, check_key
from serving.errors import InvalidInput, Unavailable, UnknownDecision, install_error_handlers
from serving.feedback import FeedbackEvent, FeedbackResult, FeedbackWriter
from serving.finetune import FineTuner
from serving.hooks import HookManager
from serving.metrics import MetricsMiddleware, ServingMetrics
from serving.policy import Decided, DecisionBatcher, ModelCatalog, Prepared, RequestEncoder, ServedModel
from serving.schemas import (
    ActBatchRequest,
    ActBatchResponse,
    ActRequest,
    Decision,
    FeedbackRequest,
    FeedbackResponse,
    FinetuneRequest,
    FinetuneResponse,
    Health,
    ModelsResponse,
    PromoteResponse,
)
from serving.settings import ServingSettings

log = logging.getLogger("decision_core.serving")


@dataclass
class ServingContext:
    """Everything the routes use, built in the lifespan."""

    settings: ServingSettings
    store: DecisionStore
    catalog: ModelCatalog
    writer: FeedbackWriter
    batcher: DecisionBatcher
    encoder: RequestEncoder
    hooks: HookManager
    metrics: ServingMetrics
    finetuner: FineTuner


def load_served_model(settings: ServingSettings) -> ServedModel:
    """Load the configured model (directory, MLflow URI or name@alias) and keep a copy of its agent directory
    for fine-tune workers."""
    from decision_core.training.models import load_agent_from_uri

    if not settings.model:
        raise InvalidInput("no model configured: pass --model (or set DECISION_CORE_SERVE_MODEL)", field="model")
    agent, ref = load_agent_from_uri(settings.uri, settings.core)
    version = ref.version or "local"
    agent_dir = settings.work_dir / agent.spec.name / "versions" / version
    agent.save(agent_dir)
    return ServedModel(
        agent=agent,
        name=ref.name or agent.spec.name,
        version=version,
        source=ref.uri,
        agent_dir=agent_dir,
        registered_name=ref.name,
    )


def _registry_functions(settings: ServingSettings) -> tuple[Any, Any]:
    """Callbacks that move the champion alias and load registered versions (MLflow, imported lazily)."""

    def set_alias(name: str, version: str) -> None:
        from decision_core.training.models import CHAMPION, set_alias

        set_alias(name, CHAMPION, version, settings.core)

    def load_version(entry: Any) -> ServedModel:
        from decision_core.algos import load_agent

        if entry.agent_dir is None:
            raise Unavailable(f"version {entry.version} has no saved agent")
        agent = load_agent(entry.agent_dir)
        return ServedModel(
            agent=agent,
            name=entry.registered_name or agent.spec.name,
            version=entry.version,
            source=entry.source,
            agent_dir=entry.agent_dir,
            registered_name=entry.registered_name,
        )

    return set_alias, load_version


# -- dependencies ---------------------------------------------------------------------------------------------------
_api_key = APIKeyHeader(name=HEADER, auto_error=False, description="One of the deployment's API keys.")


def get_ctx(request: Request) -> ServingContext:
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is None:
        raise Unavailable("the service is starting or stopping; retry shortly")
    return ctx


Ctx = Annotated[ServingContext, Depends(get_ctx)]
ApiKey = Annotated[str | None, Security(_api_key)]


def require_key(ctx: Ctx, key: ApiKey) -> None:
    check_key(ctx.settings, key)


def require_act_key(ctx: Ctx, key: ApiKey) -> None:
    if ctx.settings.protect_act:
        check_key(ctx.settings, key)


Guarded = Annotated[None, Depends(require_key)]
ActGuard = Annotated[None, Depends(require_act_key)]


def _decision(ctx: ServingContext, d: Decided, p: Prepared) -> dict[str, Any]:
    spec = d.model.agent.spec
    if spec.discrete:
        index = int(d.action[0])
        action: dict[str, Any] = {"index": index, "label": spec.actions.labels[index], "values": None}  # type: ignore[union-attr]
    else:
        action = {
            "index": None,
            "label": None,
            "values": dict(zip(spec.actions.names, map(float, d.action), strict=True)),
        }  # type: ignore[union-attr]
    return {
        "decision_id": d.decision_id,
        "request_id": p.request_id,
        "episode_id": d.episode_id,
        "step": p.step,
        "action": action,
        "propensity": d.propensity,
        "model": {"name": d.model.name, "version": d.model.version},
    }


# -- the app ----------------------------------------------------------------------------------------------------------
def create_app(settings: ServingSettings | None = None, *, hooks: HookManager | None = None) -> FastAPI:
    """The service for ``settings`` (read from the environment when None); ``hooks`` adds in-code plugins."""
    settings = settings if settings is not None else ServingSettings()
    metrics = ServingMetrics()
    hook_manager = hooks or HookManager()
    hook_manager._on_error = lambda hook: metrics.hook_errors.labels(hook).inc()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from decision_core.algos import configure_torch_threads

        configure_torch_threads(settings.inference_threads)
        hook_manager.load_entry_points()
        hook_manager.load_paths(settings.hook_paths)
        champion = await anyio.to_thread.run_sync(load_served_model, settings)
        spec = champion.agent.spec
        store = DecisionStore(settings.core.db_path)
        finetuner: FineTuner | None = None

        def committed(events: list[FeedbackEvent], results: list[FeedbackResult]) -> None:
            for e, r in zip(events, results, strict=True):
                hook_manager.dispatch(
                    "on_feedback",
                    domain=spec.name,
                    decision_id=e.decision_id,
                    episode_id=r.episode_id,
                    step=r.step,
                    reward=e.reward,
                    terminated=e.terminated,
                    truncated=e.truncated,
                )
            if finetuner is not None:
                finetuner.maybe_start()

        try:
            writer = FeedbackWriter(
                store,
                spec,
                metrics=metrics,
                queue_max=settings.writer_queue_max,
                group_max=settings.writer_group_max,
                cache_max=settings.decision_cache,
                on_committed=committed,
            ).start()
        except Exception:
            store.close()
            raise
        set_alias, load_version = _registry_functions(settings)
        catalog = ModelCatalog(
            champion, hooks=hook_manager, metrics=metrics, set_registry_alias=set_alias, load_version=load_version
        )
        finetuner = FineTuner(settings, catalog, writer, on_result=lambda r: metrics.finetune_runs.labels(r).inc())
        batcher = DecisionBatcher(catalog, writer, hooks=hook_manager, metrics=metrics, seed=settings.seed)
        batcher.start()
        app.state.ctx = ServingContext(
            settings=settings,
            store=store,
            catalog=catalog,
            writer=writer,
            batcher=batcher,
            encoder=RequestEncoder(settings.epsilon, settings.temperature),
            hooks=hook_manager,
            metrics=metrics,
            finetuner=finetuner,
        )
        log.info(
            "serving %s v%s for domain '%s' (store %s)",
            champion.name,
            champion.version,
            spec.name,
            settings.core.db_path,
        )
        try:
            yield
        finally:
            app.state.ctx = None
            finetuner.stop()
            await batcher.stop()
            await anyio.to_thread.run_sync(writer.close)
            hook_manager.stop()
            store.close()

    app = FastAPI(
        title="decision-core",
        summary="Decisions toward any reachable outcome, logged back as training data.",
        version="1",
        lifespan=lifespan,
    )
    app.state.ctx = None
    app.state.metrics = metrics
    app.state.hooks = hook_manager
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.post("/v1/act", operation_id="act", response_model=Decision, tags=["decisions"])
    async def act(body: ActRequest, ctx: Ctx, _: ActGuard) -> Any:
        """One decision for a state, toward a goal (or the reward), with its propensity."""
        p = ctx.encoder.prepare(ctx.catalog.champion.agent, body)
        [d] = await ctx.batcher.decide([p])
        return _decision(ctx, d, p)

    @app.post("/v1/act:batch", operation_id="act_batch", response_model=ActBatchResponse, tags=["decisions"])
    async def act_batch(body: ActBatchRequest, ctx: Ctx, _: ActGuard) -> Any:
        """Many decisions in one call (at most ``max_batch``)."""
        if len(body.items) > ctx.settings.max_batch:
            raise InvalidInput(
                f"items: {len(body.items)} decisions asked, this deployment allows {ctx.settings.max_batch} per call",
                field="items",
            )
        agent = ctx.catalog.champion.agent
        prepared = [ctx.encoder.prepare(agent, item, f"items[{i}].") for i, item in enumerate(body.items)]
        decided = await ctx.batcher.decide(prepared)
        # Built directly: re-validating thousands of our own decisions through the response model costs more
        # than making them.
        return JSONResponse({"decisions": [_decision(ctx, d, p) for d, p in zip(decided, prepared, strict=True)]})

    @app.post("/v1/feedback", operation_id="feedback", response_model=FeedbackResponse, tags=["feedback"])
    async def feedback(body: FeedbackRequest, ctx: Ctx, _: Guarded) -> Any:
        """What happened after a decision. A 2xx answer means the step is durable in the store."""
        agent = ctx.catalog.champion.agent
        next_state = ctx.encoder.state_vector(agent, body.next_state, "next_state")
        event = FeedbackEvent(
            decision_id=body.decision_id,
            next_state=np.asarray(next_state, np.float32),
            reward=body.reward,
            terminated=body.terminated,
            truncated=body.truncated,
        )
        try:
            result = await asyncio.wrap_future(ctx.writer.add_feedback(event))
        except UnknownDecision:
            ctx.metrics.feedback.labels("unknown_decision").inc()
            raise
        ctx.metrics.feedback.labels(result.status).inc()
        return {
            "decision_id": result.decision_id,
            "status": result.status,
            "episode_id": result.episode_id,
            "step": result.step,
        }

    @app.get("/v1/models", operation_id="list_models", response_model=ModelsResponse, tags=["models"])
    async def list_models(ctx: Ctx, _: Guarded) -> Any:
        """The champion, candidates (accepted or rejected, with reasons) and retired champions."""
        champion = ctx.catalog.champion
        return {
            "domain": champion.agent.spec.name,
            "champion": champion.info,
            "algorithm": champion.agent.name,
            "goal_conditioned": champion.agent.goal_conditioned,
            "models": [
                {
                    "version": e.version,
                    "status": e.status,
                    "source": e.source,
                    "reason": e.reason,
                    "created_at": e.created_at,
                    "metrics": e.metrics,
                }
                for e in ctx.catalog.list()
            ],
            "finetune_running": ctx.finetuner.running,
        }

    @app.post(
        "/v1/models/{version}/promote", operation_id="promote_model", response_model=PromoteResponse, tags=["models"]
    )
    async def promote_model(version: str, ctx: Ctx, _: Guarded) -> Any:
        """Make a catalog version the champion (hot swap; requests in flight finish on the old one)."""
        new, old = await anyio.to_thread.run_sync(lambda: ctx.catalog.promote(version[:128], reason="manual"))
        return {"champion": new.info, "previous": old.info}

    @app.post("/v1/models/rollback", operation_id="rollback_model", response_model=PromoteResponse, tags=["models"])
    async def rollback_model(ctx: Ctx, _: Guarded) -> Any:
        """Restore the previous champion."""
        new, old = await anyio.to_thread.run_sync(ctx.catalog.rollback)
        return {"champion": new.info, "previous": old.info}

    @app.post(
        "/v1/finetune", operation_id="start_finetune", response_model=FinetuneResponse, status_code=202, tags=["models"]
    )
    async def start_finetune(ctx: Ctx, _: Guarded, body: FinetuneRequest | None = None) -> Any:
        """Fine-tune the champion on old + new data in a worker process; promoted only if OPE says not worse."""
        run, new = ctx.finetuner.start(reason="requested", steps=body.steps if body else None)
        return {"run": run, "status": "started", "new_feedback": new}

    @app.get("/healthz", operation_id="health", response_model=Health, tags=["service"])
    async def health(ctx: Ctx) -> Any:
        """Liveness and readiness: 200 when decisions can be served and logged, else 503."""
        ok = ctx.writer.alive
        body = {
            "status": "ok" if ok else "degraded",
            "model": ctx.catalog.champion.info,
            "writer_alive": ok,
            "pending_writes": ctx.writer.pending,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", operation_id="metrics", tags=["service"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics (text format)."""
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    return app
