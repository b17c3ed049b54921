"""Schemathesis against the service's own OpenAPI spec: generated requests, valid and malformed,
to every route, over the ASGI app in front of the session LocalBackend.

No answer may be a 5xx other than the documented ones (503 busy/out of memory/weights unavailable,
501 for methods not built yet, 507 for a model that does not fit); every answer must be one the
spec documents, with a body that matches its schema; /health still answers 200 at the end.
"""

from __future__ import annotations

from collections import Counter

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from backend.http.service import create_app
from backend.settings import Settings
from tests.service_fixtures import Spy

KEY = "fuzz-key"
ALLOWED_5XX = {501, 503, 507}
EXAMPLES_PER_OPERATION_AND_MODE = 25


class NoUpload:
    """The fuzzer may write an https signed_url: record it, never send anything off this machine."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, url, result, *, compress):
        from backend.schemas.service import UploadReceipt

        self.urls.append(url)
        return UploadReceipt(
            success="recorded", slug="", n_nodes=0, n_edges=0, bytes=0, compressed=compress, url=""
        )


@pytest.fixture(scope="module")
def fuzz_app(backend):
    return create_app(Spy(backend), settings=Settings(api_key=KEY), uploader=NoUpload())


def test_generated_requests_get_no_undocumented_5xx(fuzz_app):
    # The key is ours to send (missing and wrong keys have their own test): generate everything else.
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=config)
    statuses: Counter[int] = Counter()
    sent = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 16
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            )
            def check(case):
                nonlocal sent
                response = case.call(headers={"X-Api-Key": KEY})
                sent += 1
                statuses[response.status_code] += 1
                assert response.status_code < 500 or response.status_code in ALLOWED_5XX, (
                    f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
                )
                if mode is GenerationMode.POSITIVE:
                    case.validate_response(
                        response, checks=[status_code_conformance, response_schema_conformance]
                    )

            try:
                check()
            except hypothesis.errors.Unsatisfiable:  # a GET without parameters has no malformed variant
                continue
    health = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)["/health"]["GET"].Case().call()
    assert health.status_code == 200 and health.json()["status"] == "ok"
    print(f"schemathesis: {sent} requests, statuses {dict(sorted(statuses.items()))}")
    assert sent >= 500
    assert statuses[422] > 0 and any(200 <= s < 300 for s in statuses), (
        "both valid and malformed requests were sent"
    )
