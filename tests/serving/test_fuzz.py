"""schemathesis against a real server's /openapi.json: no generated request, valid or not, gets a 5xx."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

KEY = "test-key-1"
MAX_EXAMPLES = 25  # per operation and mode: bounded so the test stays well under a minute


@pytest.mark.slow
def test_generated_requests_never_get_a_server_error(server_factory: Callable) -> None:
    server = server_factory().start()
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Half the calls carry the key, so guarded routes are fuzzed past the auth check too.
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                headers = {"X-API-Key": KEY} if calls % 2 else {}
                response = case.call(base_url=server.url, headers=headers, timeout=30)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}"
                    )

            try:
                run()
            except Unsatisfiable:
                # Nothing invalid can be made for an operation without inputs (GET /healthz).
                assert mode is GenerationMode.NEGATIVE
    assert calls > 100
    assert not failures, "\n".join(failures[:10])
