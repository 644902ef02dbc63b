"""API keys in the ``X-API-Key`` header guard feedback, fine-tune and model routes (and /v1/act if configured)."""

from __future__ import annotations

import hmac

from serving.errors import Forbidden, Unauthorized
from serving.settings import ServingSettings

HEADER = "X-API-Key"


def check_key(settings: ServingSettings, key: str | None) -> None:
    """Raise unless ``key`` is one of the configured keys (or auth is disabled)."""
    if settings.auth_disabled:
        return
    keys = settings.keys
    if not key:
        hint = "" if keys else " (and no keys are configured: set DECISION_CORE_SERVE_API_KEYS)"
        raise Unauthorized(f"this route needs an API key in the {HEADER} header{hint}", field=HEADER)
    # Compare against every key in constant time so timing does not reveal a prefix.
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(k.encode(), key.encode())
    if not ok:
        raise Forbidden(f"the API key in the {HEADER} header is not accepted", field=HEADER)
