"""The service's errors and the one table that maps every error to an HTTP status.

Routes raise these (or any :class:`~decision_core.errors.DecisionCoreError`); the handlers installed by
:func:`install_error_handlers` turn them into ``{"error": {"type", "message", "field"}}`` bodies. Messages name the
field and the rule; they never echo a whole payload (FastAPI's own validation errors are rewritten without their
``input``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from decision_core.errors import DecisionCoreError, RegistryError, SpecError, StoreError

log = logging.getLogger("decision_core.serving")


class ServingError(DecisionCoreError):
    """Base of the service's errors; ``field`` names the request field at fault, when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidInput(ServingError, ValueError):
    """The request breaks a rule of the domain spec (missing/unknown feature, bad shape, non-finite value)."""


class UnknownDecision(ServingError, LookupError):
    """Feedback names a decision id this service never issued."""


class UnknownModel(ServingError, LookupError):
    """A model version that is not in the catalog."""


class Unauthorized(ServingError):
    """No API key was sent to a guarded route."""


class Forbidden(ServingError):
    """The API key sent is not one of the configured keys."""


class Conflict(ServingError):
    """The request conflicts with the current state (a fine-tune already running, nothing to roll back to)."""


class PayloadTooLarge(ServingError):
    """The request body is larger than the deployment accepts (``max_body_bytes``)."""


class Unavailable(ServingError):
    """The service cannot do this now (model not loaded, writer overloaded or stopped); retry later."""


#: The one table from error class to (HTTP status, error type); the first matching class wins.
STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (UnknownDecision, 404, "unknown_decision"),
    (UnknownModel, 404, "unknown_model"),
    (Conflict, 409, "conflict"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (InvalidInput, 422, "invalid_input"),
    (Unavailable, 503, "unavailable"),
    (SpecError, 422, "invalid_input"),
    (RegistryError, 404, "not_found"),
    (StoreError, 503, "store_unavailable"),
    (DecisionCoreError, 400, "bad_request"),
)


def status_of(exc: BaseException) -> tuple[int, str]:
    for cls, status, kind in STATUS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal"


def error_body(kind: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "field": field}}


def _clip(part: object) -> str:
    """A location part as it may appear in a message: printable and short (keys come from the client)."""
    text = re.sub(r"[^\x20-\x7e]", "?", str(part))
    return text if len(text) <= 40 else text[:40] + "…"


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [_clip(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def _invalid_json(err: dict[str, Any]) -> str:
    """One message for a body that is not JSON, whichever parser found it: pydantic's core (the direct routes:
    ``Invalid JSON: <why> at line L column C``) or FastAPI's (``JSON decode error`` with ``ctx.error`` and the
    character offset as the location)."""
    msg = str(err.get("msg", ""))
    if msg.startswith("Invalid JSON: "):
        why = msg.removeprefix("Invalid JSON: ")
    else:
        why = str((err.get("ctx") or {}).get("error", "not JSON"))
        at = [p for p in err.get("loc", ()) if isinstance(p, int)]
        if at:
            why += f" at character {at[0]}"
    why = re.sub(r"[^\x20-\x7e]", "?", why)[:120]  # the parsers say where, never what: still keep it printable
    return f"body: invalid JSON ({why}); send one JSON object"


def install_error_handlers(app: FastAPI) -> None:
    """Map the error table onto ``app`` (and rewrite FastAPI's validation errors without their input)."""

    async def core_error(request: Request, exc: Exception) -> JSONResponse:
        status, kind = status_of(exc)
        field = getattr(exc, "field", None)
        headers = {"WWW-Authenticate": "APIKey"} if status == 401 else None
        return JSONResponse(error_body(kind, str(exc), field), status_code=status, headers=headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        first_field = None
        for err in exc.errors()[:10]:
            if err.get("type") == "json_invalid":
                first_field = first_field or "body"
                problems.append(_invalid_json(err))
                continue
            field = _loc(err.get("loc", ()))
            first_field = first_field or field
            problems.append(f"{field or 'body'}: {err.get('msg', 'invalid')}")
        more = len(exc.errors()) - len(problems)
        message = "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
        return JSONResponse(error_body("invalid_input", message, first_field), status_code=422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the caller's fault: log it in full, answer without internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal", "internal error; see the server log"), status_code=500)

    app.add_exception_handler(DecisionCoreError, core_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
