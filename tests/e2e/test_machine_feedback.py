"""``flywheel label`` against the real engine (the tiny model as its own judge), broker, worker and store.

Pairs are served through the gateway; the judge's verdicts go through Kafka and the worker. A
random model judges at random, so this checks the plumbing, not the taste: vLLM's structured
outputs hold every reply to "1" or "2" (no pair unparsed), both orders are asked, each verdict
is stored once with source ai, and a second run finds nothing left to judge.
"""

from __future__ import annotations

import openai
import pytest
from sqlalchemy import select

from feedback.db.models import Completion, Feedback
from feedback.db.session import make_engine, session_factory
from feedback.filters.settings import FilterSettings
from flywheel.stack.supervise import wait_for
from tests.e2e.conftest import Stack
from tests.e2e.test_loop import cli_ok, count

pytestmark = pytest.mark.engine

PAIRS = 3


def test_label_judges_served_pairs_once_through_the_worker(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.gateway}/v1", api_key=stack.key, max_retries=0)
    for i in range(PAIRS):
        question = [{"role": "user", "content": f"Name a colour ({i})."}]
        client.chat.completions.create(model="flywheel", messages=question, max_tokens=12,  # type: ignore[arg-type]
                                       extra_body={"flywheel": {"pairwise": True}})
    wait_for(lambda: count(stack, Completion, Completion.pair_id.is_not(None)) == 2 * PAIRS, 30, "pairs stored")

    output = " ".join(cli_ok(stack, "label", "--limit", "10").split())

    assert f"{PAIRS} events sent to the broker" in output and "unparsed" not in output, output
    wait_for(lambda: count(stack, Feedback, Feedback.source == "ai") == PAIRS, 30, "verdicts stored")
    judge = f"ai:{stack.settings.base_engine_model}"
    with session_factory(make_engine(stack.settings.resolved_database_url))() as session:
        verdicts = session.execute(select(Feedback.choice, Feedback.user_id, Feedback.weight)
                                   .where(Feedback.source == "ai")).all()
    assert {(user, weight) for _, user, weight in verdicts} == {(judge, FilterSettings().ai_weight)}
    assert {choice for choice, *_ in verdicts} <= {"a", "b", "tie"}

    again = " ".join(cli_ok(stack, "label").split())
    assert "nothing to label" in again, again
