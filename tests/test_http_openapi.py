"""The API fuzzed from its own OpenAPI document (schemathesis): no 5xx, every answer declared.

Every operation gets valid and invalid requests (positive and negative generation), once with
random names and ids and once with those of a real job, run and step, so both the 404 paths
and the real answers are checked against their schemas. Bounded: a fixed number of examples,
derandomised, no example database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev extra")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pipeline.http import openapi_document  # noqa: E402
from tests.test_http import open_daemon, wait_run  # noqa: E402

pytestmark = pytest.mark.slow  # a real daemon, and hundreds of requests

EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def fuzz(base: str, real: dict[str, str]) -> int:
    """Run every operation's examples; return how many requests were made."""
    schema = schemathesis.openapi.from_dict(openapi_document())
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        names = {p.name for p in operation.path_parameters}
        # The real run is kept for the routes that read it: DELETE gets random ids only.
        fixed = {k: v for k, v in real.items() if k in names and operation.method != "delete"}
        variants: list[dict[str, Any] | None] = [None, fixed] if fixed else [None]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in variants:
                strategy = operation.as_strategy(generation_mode=mode,
                                                 path_parameters=path_parameters)

                @settings(max_examples=EXAMPLES, deadline=None, database=None,
                          derandomize=True, phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))
                @given(case=strategy)
                def check(case: Any) -> None:
                    nonlocal calls
                    calls += 1
                    response = case.call(base_url=base, timeout=15)
                    case.validate_response(response, checks=CHECKS)

                try:
                    check()
                except Unsatisfiable:
                    # Nothing in this operation can be made invalid (no parameters, no body).
                    assert mode is GenerationMode.NEGATIVE, operation.label
    return calls


async def test_the_api_answers_what_its_document_says(tmp_path: Path) -> None:
    async with open_daemon(tmp_path) as daemon:
        assert daemon.listen is not None
        async with httpx.AsyncClient(base_url=daemon.listen, timeout=10) as http:
            run_id = (await http.post("/api/v1/jobs/hello/runs")).json()["run_id"]
            await wait_run(http, run_id)
        real = {"name": "hello", "run_id": run_id, "step": "greet"}
        with trio.fail_after(60):
            calls = await trio.to_thread.run_sync(fuzz, daemon.listen, real)
        assert calls > 200
