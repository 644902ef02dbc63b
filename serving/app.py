"""The HTTP service: ``create_app(settings)`` builds a FastAPI app around one model and one decision store.

The model is loaded, the store opened and the writer, inference worker and fine-tuner started in the lifespan;
routes reach them through the ``Ctx`` dependency. See ``docs/serving.md`` for the API and the rules.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from threadpoolctl import threadpool_limits

from decision_core.algos import Agent
from decision_core.reward import LOGGED
from decision_core.schema import DomainSpec
from decision_core.store import DecisionStore
from serving.auth import HEADER, check_key
from serving.errors import (
    Conflict,
    InvalidInput,
    PayloadTooLarge,
    Unavailable,
    UnknownDecision,
    error_body,
    install_error_handlers,
    status_of,
)
from serving.feedback import FeedbackEvent, FeedbackResult, FeedbackWriter, decisions_table
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

B = TypeVar("B", bound=BaseModel)


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
    #: ``action`` objects of discrete decisions by index (the spec never changes while serving).
    action_views: list[dict[str, Any]] | None = None


def needs_reward(agent: Agent) -> bool:
    """Whether an outcome must carry a reward: the domain's models learn from the steps' rewards by default (its
    spec's reward is ``"logged"``), or the served reward model (and so its fine-tunes) was trained on them."""
    from decision_core.training.select import task_of

    trained_on_logged = not agent.goal_conditioned and agent.needs_rewards and task_of(agent).strip() == LOGGED
    return (agent.spec.reward or "").strip() == LOGGED or trained_on_logged


def load_served_model(settings: ServingSettings) -> ServedModel:
    """Load the configured model (directory, MLflow URI or name@alias) and keep a copy of its agent directory
    for fine-tune workers."""
    from decision_core.training.models import load_agent_from_uri

    if not settings.model:
        raise InvalidInput("no model configured: pass --model (or set DECISION_CORE_SERVE_MODEL)", field="model")
    uri = settings.uri
    agent, ref = load_agent_from_uri(uri, settings.core)
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


# Dependencies are coroutines: FastAPI runs plain functions in its thread pool, a thread hop per dependency per
# request.
async def get_ctx(request: Request) -> ServingContext:
    return serving_context(request.app)


def serving_context(app: Any) -> ServingContext:
    ctx = getattr(app.state, "ctx", None)
    if ctx is None:
        raise Unavailable("the service is starting or stopping; retry shortly")
    return ctx  # type: ignore[no-any-return]


Ctx = Annotated[ServingContext, Depends(get_ctx)]
ApiKey = Annotated[str | None, Security(_api_key)]


async def require_key(ctx: Ctx, key: ApiKey) -> None:
    check_key(ctx.settings, key)


async def require_act_key(ctx: Ctx, key: ApiKey) -> None:
    if ctx.settings.protect_act:
        check_key(ctx.settings, key)


Guarded = Annotated[None, Depends(require_key)]
ActGuard = Annotated[None, Depends(require_act_key)]


def action_views(spec: Any) -> list[dict[str, Any]] | None:
    """The ``action`` object of every discrete action, made once (None for continuous domains)."""
    if not spec.discrete:
        return None
    return [{"index": i, "label": label, "values": None} for i, label in enumerate(spec.actions.labels)]


def _decision(ctx: ServingContext, d: Decided, p: Prepared) -> dict[str, Any]:
    views = ctx.action_views
    if views is not None:
        action = views[int(d.action[0])]
    else:
        names = d.model.agent.spec.actions.names  # type: ignore[union-attr]
        action = {"index": None, "label": None, "values": dict(zip(names, d.action.tolist(), strict=True))}
    return {
        "decision_id": d.decision_id,
        "request_id": p.request_id,
        "episode_id": d.episode_id,
        "step": p.step,
        "action": action,
        "propensity": d.propensity,
        "model": d.model.info,
    }


def json_body(content: Any) -> bytes:
    """A JSON answer serialised in pydantic's Rust core (the routes build their bodies from their own validated
    data, so re-validating them through the response model would only cost time)."""
    return to_json(content)


_JSON = (b"content-type", b"application/json")

DirectHandler = Callable[[Scope, Receive], Coroutine[Any, Any, bytes]]


class DirectRoute(APIRoute):
    """A route documented from its endpoint's signature (body, key, response model: the OpenAPI entry is the
    usual one) but served by ``endpoint.direct_handler(scope, receive) -> bytes`` (the JSON body of its 200
    answer) as a plain ASGI app.

    FastAPI's per-request machinery (dependency solving, body decoding, content negotiation, exit stacks) costs
    some 30-50 µs a request here, more than a decision; the handlers of the hot routes do the same steps
    explicitly, on the ASGI messages (no Request or Response objects: a few µs more). Errors they raise reach the
    app's exception handlers as from any route.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        handler = self.get_route_handler()

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            body = await handler(scope, receive)
            await send({"type": "http.response.start", "status": 200, "headers": [_length(body), _JSON]})
            await send({"type": "http.response.body", "body": body})

        self.app = serve

    def get_route_handler(self) -> DirectHandler:  # type: ignore[override]
        return self.endpoint.direct_handler  # type: ignore[attr-defined, no-any-return]


def _length(body: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(body)).encode())


async def read_body(receive: Receive) -> bytes:
    """The request body from the ASGI messages (as ``Request.body()``; usually one message)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


_KEY_HEADER = HEADER.lower().encode("latin-1")


def header_key(scope: Scope) -> str | None:
    """The API key header of a request (the first one, decoded as Starlette decodes headers), or None."""
    for name, value in scope["headers"]:
        if name == _KEY_HEADER:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def parse_body(model: type[B], raw: bytes) -> B:
    """``raw`` JSON validated into ``model`` in one pass; errors become FastAPI's validation errors (422)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False, include_url=False)]
        raise RequestValidationError(errors) from None


class BodySizeLimit:
    """Refuses request bodies over ``limit`` bytes with a 413 (``PayloadTooLarge`` in the error table) without
    reading them: by the Content-Length header, or, for a body sent without one (chunked), as soon as what has
    arrived passes the limit (such a body is read here, then handed on whole). A request whose declared length is
    within the limit passes untouched: the server holds it to that length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else None
                break
        if declared is not None:
            if declared <= self.limit:
                await self.app(scope, receive, send)
            else:
                await self._refuse(scope, receive, send, f"is {declared} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        first: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                first = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send, f"passed {self.limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replay: list[Message] = [first]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, how: str) -> None:
        exc = PayloadTooLarge(
            f"body: the request body {how}; this deployment accepts at most {self.limit} bytes "
            "(DECISION_CORE_SERVE_MAX_BODY_BYTES): split a batch into smaller calls",
            field="body",
        )
        status, kind = status_of(exc)
        await JSONResponse(error_body(kind, str(exc), exc.field), status_code=status)(scope, receive, send)


def episode_ended(episode_id: str, field: str) -> Conflict:
    """The refusal of a decision for an episode whose last stored step is terminated."""
    return Conflict(
        f"{field} '{episode_id[:64]}' has ended: its last stored step is terminated, and a terminated episode takes "
        "no later decisions; start a new episode id (an episode cut short is reported as truncated, and may go on)",
        field=field,
    )


# -- the app ----------------------------------------------------------------------------------------------------------
def recent_episode_actions(
    spec: DomainSpec, settings: ServingSettings
) -> Callable[[DecisionStore], list[tuple[str, list[int]]]]:
    """A writer call that reads the actions of the ``episode_memory`` most recently served episodes (oldest
    first) from the logged decisions; requests that named no episode are left out."""

    def read(store: DecisionStore) -> list[tuple[str, list[int]]]:
        rows = store.con.execute(
            f"SELECT episode_id, list(CAST(action[1] AS INTEGER)) FROM {decisions_table(spec)} "
            "WHERE episode_id <> decision_id GROUP BY episode_id ORDER BY max(created_at) DESC LIMIT ?",
            [settings.episode_memory],
        ).fetchall()
        return [(e, list(a)) for e, a in reversed(rows)]

    return read


def create_app(
    settings: ServingSettings | None = None, *, hooks: HookManager | None = None, champion: ServedModel | None = None
) -> FastAPI:
    """The service for ``settings`` (read from the environment when None); ``hooks`` adds in-code plugins.

    ``champion``: the model to serve, already loaded by :func:`load_served_model` (``decision-core serve`` loads it
    before starting uvicorn, so a model it cannot load is a one-line error); when None the lifespan loads it.
    """
    settings = settings if settings is not None else ServingSettings()
    preloaded = champion
    metrics = ServingMetrics()
    hook_manager = hooks or HookManager()
    hook_manager._on_error = lambda hook: metrics.hook_errors.labels(hook).inc()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from decision_core.algos import configure_torch_threads

        configure_torch_threads(settings.inference_threads)
        hook_manager.load_entry_points()
        hook_manager.load_paths(settings.hook_paths)
        champion = preloaded if preloaded is not None else await anyio.to_thread.run_sync(load_served_model, settings)
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
                episode_memory=settings.episode_memory,
                new_episodes_cap=settings.finetune_needed_episodes,
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
        batcher = DecisionBatcher(
            catalog,
            writer,
            hooks=hook_manager,
            metrics=metrics,
            seed=settings.seed,
            episode_memory=settings.episode_memory,
        )
        if spec.once_per_episode:  # episodes under way when the server last stopped keep their rule
            for episode_id, actions in await asyncio.wrap_future(writer.call(recent_episode_actions(spec, settings))):
                for a in actions:
                    batcher.episodes.add(episode_id, a)
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
            action_views=action_views(spec),
        )
        log.info(
            "serving %s v%s for domain '%s' (store %s)",
            champion.name,
            champion.version,
            spec.name,
            settings.core.db_path,
        )
        # numpy forward passes are small: more BLAS threads would only contend with the server's own threads.
        blas = threadpool_limits(settings.inference_threads, user_api="blas")
        switch_interval = sys.getswitchinterval()
        if settings.switch_interval_s is not None:
            sys.setswitchinterval(settings.switch_interval_s)
        if settings.gc_freeze:
            # The loaded libraries and model are a few million objects that live as long as the process; left in
            # the collector's oldest generation, every full collection walks them all (stalls of ~300 ms under
            # load). Frozen, collections only walk what serving allocates.
            await anyio.to_thread.run_sync(gc.collect)
            gc.freeze()
        try:
            yield
        finally:
            app.state.ctx = None
            finetuner.stop()
            await batcher.stop()
            await anyio.to_thread.run_sync(writer.close)
            hook_manager.stop()
            store.close()
            blas.restore_original_limits()
            sys.setswitchinterval(switch_interval)
            if settings.gc_freeze:
                gc.unfreeze()  # let the interpreter collect them at exit (extension types report leaks otherwise)

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
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: refused bodies are counted too

    # The three routes on the request path are served by direct handlers (see DirectRoute): they check the key,
    # parse the body in pydantic's core and call the documented endpoint, which then runs as FastAPI would.
    async def act(body: ActRequest, ctx: Ctx, _: ActGuard) -> Any:
        """One decision for a state, toward a goal (or the reward), with its propensity."""
        p = ctx.encoder.prepare(ctx.catalog.champion.agent, body)
        if p.episode_id is not None and ctx.writer.ended(p.episode_id):
            raise episode_ended(p.episode_id, "episode_id")
        [d] = await ctx.batcher.decide([p])
        return json_body(_decision(ctx, d, p))

    async def act_direct(scope: Scope, receive: Receive) -> bytes:
        ctx = serving_context(scope["app"])
        if ctx.settings.protect_act:  # the header is only read when it is asked for
            check_key(ctx.settings, header_key(scope))
        return await act(parse_body(ActRequest, await read_body(receive)), ctx, None)  # type: ignore[no-any-return]

    async def act_batch(body: ActBatchRequest, ctx: Ctx, _: ActGuard) -> Any:
        """Many decisions in one call (at most ``max_batch``)."""
        if len(body.items) > ctx.settings.max_batch:
            raise InvalidInput(
                f"items: {len(body.items)} decisions asked, this deployment allows {ctx.settings.max_batch} per call",
                field="items",
            )
        agent = ctx.catalog.champion.agent
        prepared = [ctx.encoder.prepare(agent, item, f"items[{i}].") for i, item in enumerate(body.items)]
        for i, p in enumerate(prepared):
            if p.episode_id is not None and ctx.writer.ended(p.episode_id):
                raise episode_ended(p.episode_id, f"items[{i}].episode_id")
        decided = await ctx.batcher.decide(prepared)
        return json_body({"decisions": [_decision(ctx, d, p) for d, p in zip(decided, prepared, strict=True)]})

    async def act_batch_direct(scope: Scope, receive: Receive) -> bytes:
        ctx = serving_context(scope["app"])
        if ctx.settings.protect_act:
            check_key(ctx.settings, header_key(scope))
        return await act_batch(parse_body(ActBatchRequest, await read_body(receive)), ctx, None)  # type: ignore[no-any-return]

    async def feedback(body: FeedbackRequest, ctx: Ctx, _: Guarded) -> Any:
        """What happened after a decision. A 2xx answer means the step is durable in the store."""
        agent = ctx.catalog.champion.agent
        next_state = ctx.encoder.state_vector(agent, body.next_state, "next_state")
        if body.reward is None and needs_reward(agent):
            raise InvalidInput(
                f"reward: domain '{agent.spec.name}' trains on the rewards its steps carry (the reward of its spec "
                f"or of the served model is '{LOGGED}'), so every outcome needs one; send the reward observed after "
                "this decision",
                field="reward",
            )
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
        except Conflict:  # an ended episode, or a retry that changes a stored outcome
            ctx.metrics.feedback.labels("rejected").inc()
            raise
        ctx.metrics.feedback.labels(result.status).inc()
        return json_body(
            {
                "decision_id": result.decision_id,
                "status": result.status,
                "episode_id": result.episode_id,
                "step": result.step,
            }
        )

    async def feedback_direct(scope: Scope, receive: Receive) -> bytes:
        ctx = serving_context(scope["app"])
        check_key(ctx.settings, header_key(scope))
        return await feedback(parse_body(FeedbackRequest, await read_body(receive)), ctx, None)  # type: ignore[no-any-return]

    for path, endpoint, handler, model, tag in (
        ("/v1/act", act, act_direct, Decision, "decisions"),
        ("/v1/act:batch", act_batch, act_batch_direct, ActBatchResponse, "decisions"),
        ("/v1/feedback", feedback, feedback_direct, FeedbackResponse, "feedback"),
    ):
        endpoint.direct_handler = handler  # type: ignore[attr-defined, union-attr]
        app.router.add_api_route(
            path,
            endpoint,
            methods=["POST"],
            operation_id=endpoint.__name__,
            response_model=model,
            tags=[tag],
            route_class_override=DirectRoute,
        )
    # Routes are matched in order: the hot ones first, ahead of the documentation pages FastAPI added at creation
    # (the paths do not overlap, so only the time to find them changes).
    routes = app.router.routes
    routes[:] = [r for r in routes if isinstance(r, DirectRoute)] + [
        r for r in routes if not isinstance(r, DirectRoute)
    ]

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
