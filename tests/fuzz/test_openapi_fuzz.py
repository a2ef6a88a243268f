"""Fuzz tests: schemathesis generates requests from /openapi.json against the running API, worker and upstream."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis import Case, GenerationMode, checks
from schemathesis.specs.openapi.schemas import OpenApiSchema

from api.main import create_app
from tests.support.stack import Stack, running_stack

KEY = "fuzz-key-3f9a21c0"
# Also the total cap on reading an event stream: schemathesis stops reading text/event-stream bodies once it
# passes, so a stream that never ends (a generation stuck in the queue) cannot hang the run.
REQUEST_TIMEOUT_S = 5.0
CREATE = ("POST", "/v1/generations")

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20240601,
        "cache": {"enabled": False},  # nothing written next to the repo
        "request-timeout": REQUEST_TIMEOUT_S,
        "generation": {"database": "none", "deterministic": True},
        # The links come from with_links() below.
        "phases": {"stateful": {"inference": {"algorithms": []}}},
        # 413 is how this API rejects a body over MAX_BODY_BYTES (or over MAX_PROMPT_CHARS): a rejection too.
        "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 409, 413, 415, 422]}},
    }
)
# Whatever the generated data, the answer must not be a 5xx, and must be one the document declares, with the
# declared content type, headers and body schema (SSE events included); schema-invalid input must be refused.
# Not positive_data_acceptance: the schema cannot say "exactly one of prompt and messages" or which hook names
# the workers have registered, so schema-valid bodies are legitimately refused with 422.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]
SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
EXAMPLES = {"valid-key": 80, "no-valid-key": 25}
STATEFUL_RUNS, STATEFUL_STEPS = 40, 8
# Authorization headers that must all be refused, next to no header at all.
NOT_A_KEY = [None, "Bearer not-a-key", f"Basic {KEY}", "Bearer ", "bearer", f"Bearer {KEY}x"]

# Test ids only (one test per operation, collected before any server runs); the fuzzing itself reads the
# document that the running API serves.
OPERATIONS = [
    (method.upper(), path)
    for path, item in create_app().openapi()["paths"].items()
    for method in item
    if method in ("get", "post", "put", "patch", "delete")
]


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # database=None keeps no examples, but Hypothesis still caches constants and Unicode tables in ./.hypothesis.
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(None)


@pytest.fixture(scope="module")
def fuzz_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A model without the demo's per-chunk delay, so each generation ends in milliseconds.
    logdir = tmp_path_factory.mktemp("fuzz-stack")
    with running_stack(redis_url, logdir, SSE_RELAY_API_KEYS=KEY, AI_MODEL_NAME="gpt-4o-mini") as stack:
        yield stack


@pytest.fixture(scope="module")
def api_schema(fuzz_stack: Stack) -> OpenApiSchema:
    document = httpx.get(f"{fuzz_stack.api_url}/openapi.json", timeout=10).raise_for_status().json()
    return schemathesis.openapi.from_dict(with_links(document), config=CONFIG)


def with_links(document: dict[str, Any]) -> dict[str, Any]:
    """Add the OpenAPI links the stateful test follows from a created generation to the operations on its id.

    schemathesis's own inference links only the first 2xx (the 200) by `$response.body#/id`, which an event
    stream does not have; the id is in the 200's X-Generation-Id header and in the 202's JSON body."""
    targets = {
        "read": ("/v1/generations/{generation_id}", "get"),
        "follow": ("/v1/generations/{generation_id}/events", "get"),
        "cancel": ("/v1/generations/{generation_id}/cancel", "post"),
    }
    responses = document["paths"][CREATE[1]]["post"]["responses"]
    for status, generation_id in (("200", "$response.header.X-Generation-Id"), ("202", "$response.body#/id")):
        responses[status]["links"] = {
            name: {
                "operationRef": "#/paths/" + path.replace("/", "~1") + "/" + method,
                "parameters": {"path.generation_id": generation_id},
            }
            for name, (path, method) in targets.items()
        }
    return document


def acceptable(case: Case[Any]) -> None:
    """Bend a generated create body toward one the API accepts, so generations really start and run.

    The rules the schema cannot express: exactly one of prompt and messages, `system` only with `prompt`, hooks
    the workers know (none here). Everything else stays as generated (a random `model` ends in an upstream error
    event, no model in a `done`). schemathesis re-checks the edited case before sending it."""
    body = case.body
    if (case.method.upper(), case.path) != CREATE or not isinstance(body, dict):
        return
    body = dict(body)
    if body.get("prompt") is None and body.get("messages") is None:
        body["prompt"] = "echo:fuzz"
    if body.get("prompt") is not None:
        body.pop("messages", None)
    else:
        body.pop("prompt", None)
        body.pop("system", None)
    body.pop("on_complete", None)
    body.pop("on_content", None)
    case.body = body


@pytest.mark.parametrize("auth", sorted(EXAMPLES))
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_operation(api_schema: OpenApiSchema, fuzz_stack: Stack, method: str, path: str, auth: str) -> None:
    operation = api_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    authorization = st.just(f"Bearer {KEY}") if auth == "valid-key" else st.sampled_from(NOT_A_KEY)
    statuses: Counter[int] = Counter()

    @given(case=cases, authorization=authorization, tidy=st.booleans())
    @settings(SETTINGS, max_examples=EXAMPLES[auth])
    def run(case: Case[Any], authorization: str | None, tidy: bool) -> None:
        if tidy:
            acceptable(case)
        headers = {} if authorization is None else {"Authorization": authorization}
        response = case.call_and_validate(
            base_url=fuzz_stack.api_url, headers=headers, timeout=REQUEST_TIMEOUT_S, checks=CHECKS
        )
        statuses[response.status_code] += 1

    run()
    if auth == "valid-key" and (method, path) == CREATE:
        # The fuzzing reached past validation: generations were created (and streamed, or queued).
        assert statuses[200] + statuses[202] > 0, statuses
    if auth == "no-valid-key" and path.startswith("/v1/"):
        assert statuses[401], statuses


def test_fuzz_stateful(api_schema: OpenApiSchema, fuzz_stack: Stack) -> None:
    """Sequences that create a generation, then read, follow and cancel it by the id the API returned."""
    statuses: Counter[tuple[str, int]] = Counter()

    class Workflow(api_schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Case[Any]) -> None:
            acceptable(case)
            # Which rules a scenario can take next depends on the answers so far; an Idempotency-Key that an
            # earlier scenario already used would change them between runs of the same scenario (Hypothesis then
            # stops on "inconsistent data generation"). The stateless tests fuzz this header.
            for name in [name for name in case.headers or {} if name.lower() == "idempotency-key"]:
                del case.headers[name]

        def get_call_kwargs(self, case: Case[Any]) -> dict[str, Any]:
            return {
                "base_url": fuzz_stack.api_url,
                "headers": {"Authorization": f"Bearer {KEY}"},
                "timeout": REQUEST_TIMEOUT_S,
            }

        def validate_response(
            self, response: Any, case: Case[Any], additional_checks: Any = None, **kwargs: Any
        ) -> None:
            statuses[(case.path, response.status_code)] += 1
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    Workflow.run(settings=settings(SETTINGS, max_examples=STATEFUL_RUNS, stateful_step_count=STATEFUL_STEPS))
    # The links worked: later steps found the generations earlier steps created.
    found = {path for (path, status), _ in statuses.items() if path != CREATE[1] and 200 <= status < 300}
    assert found == {"/v1/generations/{generation_id}", "/v1/generations/{generation_id}/events",
                     "/v1/generations/{generation_id}/cancel"}, statuses  # fmt: skip
