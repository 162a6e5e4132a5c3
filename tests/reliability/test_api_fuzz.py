"""The HTTP API under schemathesis: every operation of the OpenAPI schema, generated and negative inputs, in process.

No answer may be a 5xx or break the schema it declares (status, content type, body); a negative case
(a value the schema forbids) must be refused with a 4xx.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranking.service import ServiceConfig, create_app
from tests.shops import served_shop


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    """The served test shop's app, with text search through the packaged MiniLM at the shop vectors' width."""
    from embeddings.dual_encoder import DualEncoderSpec, build_dual_encoder
    from embeddings.encode import load_encoder, read_item_embeddings
    from embeddings.search import ProductSearch

    data = served_shop()
    # Event timestamps: the API takes 1970 to an hour ahead of its clock, as the schema says in words and
    # `formatMinimum`; Hypothesis's date-time generator reads neither, so it is told here (any time zone).
    offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
    moments = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime.now() - timedelta(days=1), timezones=offsets)
    schemathesis.openapi.format("date-time", moments.map(lambda moment: moment.isoformat()))
    item_ids, vectors, _, meta = read_item_embeddings(data)
    model = tmp_path_factory.mktemp("fuzz") / "encoder"
    build_dual_encoder(DualEncoderSpec(projection_dim=vectors.shape[1]), seed=0).save(model)
    search = ProductSearch(item_ids, vectors, load_encoder(data, str(model)), model_version=meta.get("vitrine.model_version", "test"))
    # Posted events go to a spool of this test's own, not into the session's shared shop.
    spool = tmp_path_factory.mktemp("fuzz-spool")
    app = create_app(ServiceConfig(data_dir=data.root, watch=False, event_spool=spool), search_engine=search)
    with TestClient(app):  # runs the lifespan: the models are loaded before the first case
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


# Generated cases per operation and mode: a few hundred requests in all, about a minute.
EXAMPLES = 40


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_operation_answers_within_its_schema(
    api_schema: schemathesis.BaseSchema, mode: schemathesis.GenerationMode, record_property: Callable[[str, object], None]
) -> None:
    """Valid inputs: no 5xx and answers as declared (a valid one refused is a failure too); invalid: a 4xx."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 7
    assert "POST /events" in {f"{operation.method.upper()} {operation.path}" for operation in operations}
    calls = 0
    for operation in operations:
        if mode is schemathesis.GenerationMode.NEGATIVE and not list(operation.iter_parameters()):
            continue  # nothing to make invalid (/healthz, /readyz, /metrics)

        @given(case=operation.as_strategy(mode))
        # Derandomized: CI runs the same cases every time (a new random failure would read as a flaky test).
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
        def answers(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate()

        answers()
    record_property("requests", calls)
    record_property("failed_requests", 0)  # any failed check has raised above
    record_property("outcome", f"{mode.value}: {calls} generated requests over {len(operations)} operations, each answered within its schema")
    assert calls >= len(operations) // 2  # every operation with something to vary was called


# Scenarios of the stateful phase and the calls each may chain (hypothesis's stateful_step_count).
SCENARIOS, STEPS = 30, 6


def test_linked_calls_chain_within_their_schemas(api_schema: schemathesis.BaseSchema, record_property: Callable[[str, object], None]) -> None:
    """The stateful phase: calls chained by the schema's links (post an event -> that user's list -> items like
    the first one -> items like those ...), every answer within its schema.

    /search is left out of this phase only: schemathesis starts scenarios at its "reliable" roots when it
    finds any, and a GET without path parameters is one, so with /search in, every scenario would start
    there and the event -> user chain would never run. /search is fuzzed by the stateless phases above."""
    calls: list[str] = []
    found: list[str] = []  # /similar answered 200: a random id is almost never an item, so the id came by a link

    class Shopper(api_schema.exclude(path="/search").as_state_machine()):  # type: ignore[misc]
        def after_call(self, response: Any, case: schemathesis.Case) -> None:
            calls.append(f"{case.method.upper()} {case.operation.path}")
            if case.operation.path == "/similar/{item_id}" and response.status_code == 200:
                found.append(case.path_parameters["item_id"])

    Shopper.run(settings=settings(max_examples=SCENARIOS, stateful_step_count=STEPS, deadline=None, database=None,
                                  derandomize=True, suppress_health_check=list(HealthCheck)))  # fmt: skip
    record_property("requests", len(calls))
    record_property("failed_requests", 0)  # a failed check raises above
    record_property("outcome", f"stateful: {SCENARIOS} scenarios, {len(calls)} chained calls ({len(found)} item ids "
                               "followed from one answer to the next), each answered within its schema")
    assert len(calls) >= SCENARIOS and found
    assert {"GET /similar/{item_id}", "GET /recommend/{user_id}", "POST /events"} <= set(calls), set(calls)
