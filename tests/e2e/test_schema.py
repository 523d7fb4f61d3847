"""Schemathesis against the real gateway, engine, broker and worker: the OpenAPI document is the truth.

Every operation gets generated requests (bounded: ``MAX_EXAMPLES`` each, derandomized so a run
is repeatable and CI does not turn red by chance; a finding is fixed and kept as a plain test) with an admin key,
so admin routes are exercised too; chat bodies name the served model, ask for a few tokens
and use roles the chat template knows, so they reach the engine instead of stopping at a
404. Each answer must be no 5xx, a status the document declares for that operation, of the
declared content type, and match the declared schema.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client import REGISTRY
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import Stack

MAX_EXAMPLES = 15
ROLES = ("system", "user", "assistant")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

pytestmark = pytest.mark.engine


def test_the_gateway_answers_as_its_schema_says(stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.gateway}/openapi.json")

    @schema.hook
    def map_body(ctx: Any, body: Any) -> Any:
        """A chat that reaches the engine: the served model, a few tokens, roles the chat template knows."""
        if ctx.operation.path != "/v1/chat/completions" or not isinstance(body, dict):
            return body
        messages = body.get("messages")
        messages = messages if isinstance(messages, list) else []
        for i, message in enumerate(messages):
            if isinstance(message, dict):
                message["role"] = "user" if i == len(messages) - 1 else ROLES[i % len(ROLES)]
        return {**body, "model": stack.settings.public_model, "max_tokens": 4}

    answered_before = answers_served()
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        def answers_as_declared(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=60, checks=CHECKS)

        try:
            answers_as_declared()
        except Exception as exc:  # every operation is tried; all findings are reported together
            failures[operation.label] = str(exc)
    assert len(operations) >= 14
    assert not failures, "\n\n".join(f"{label}:\n{finding}" for label, finding in failures.items())
    assert answers_served() > answered_before, "no generated chat reached the engine"


def answers_served() -> float:
    """The gateway's count of answers served (it runs in this process): chats that reached the engine."""
    return sum(sample.value for metric in REGISTRY.collect() if metric.name == "flywheel_answers"
               for sample in metric.samples if sample.name == "flywheel_answers_total")
