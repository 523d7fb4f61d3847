"""The engine killed under a stream of chats and votes: chat answers 503 at once, recovers once the engine is
back, and every answer and vote the gateway acknowledged is stored once.

The real vLLM CPU engine on a tiny model (about a minute to start on 2 cores, twice per test). Only one
engine may run on this machine at a time: run under ``flock /tmp/flywheel-engine.lock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from feedback.db.models import Completion, Feedback, Quarantine
from flywheel.stack.engine import vllm_process
from flywheel.stack.supervise import free_port
from serving.settings import ServingSettings
from tests.fault.harness import Load, database_name, running_stack, sigkill

pytestmark = [pytest.mark.fault, pytest.mark.engine]

FAST_503_S = 1.0


class ChatLoad(Load):
    """Chats (a few tokens each), and a thumbs vote on every answer: acknowledged are the answers' response ids
    (the gateway acknowledges an answer's record by answering) and the votes' event ids."""

    def send(self, client: httpx.Client) -> list[str]:
        n = next(self.numbers)
        answer = client.post("/v1/chat/completions", json=chat(f"Count to {n % 7}", user=f"user-{n % 40}"))
        answered = self.accepted(answer, ["answer"])
        if not answered:
            return []
        response_id = answer.json()["flywheel"]["response_id"]
        vote = {"type": "thumbs", "response_id": response_id, "rating": "up" if n % 3 else "down",
                "user_id": f"user-{n % 40}", "event_id": f"{self.prefix}-{n}"}
        return [response_id, *self.accepted(client.post("/v1/feedback", json=vote), [vote["event_id"]])]


def chat(content: str, user: str = "tester") -> dict[str, Any]:
    return {"model": "flywheel", "messages": [{"role": "user", "content": content}], "max_tokens": 8, "user": user}


def test_engine_killed_chat_fails_fast_and_recovers(db_url: str, stack_settings: Callable[..., ServingSettings],
                                                    tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    settings = stack_settings(db_url, engine_url=f"http://127.0.0.1:{port}")
    engine = vllm_process(settings.model_copy(update={"engine_port": port, "engine_max_model_len": 2048,
                                                      "engine_kv_cache_gb": 1}),
                          tiny_model, tmp_path / "engine.log")
    with engine, running_stack(settings, db_url) as stack:
        auth = {"Authorization": f"Bearer {stack.key}"}
        with ChatLoad(stack, "ch", senders=2, pause=0.1) as load, \
                httpx.Client(base_url=stack.url, headers=auth, timeout=30) as client:
            load.wait_acknowledged(30, timeout=180)
            sigkill(engine)
            waits = []
            for _ in range(5):  # each chat while the engine is dead: 503 within a second
                started = time.monotonic()
                refused = client.post("/v1/chat/completions", json=chat("Hello?"))
                waits.append(time.monotonic() - started)
                assert refused.status_code == 503, refused.text
                assert "engine" in refused.json()["error"]["message"]
            assert max(waits) < FAST_503_S, waits
            engine.start().wait_ready()
            back = time.monotonic()
            load.acked.clear()
            assert load.acked.wait(60), "chat answering again"
            recovered = time.monotonic() - back
            load.wait_acknowledged(30, timeout=180)
        figures = stack.settle(load, "engine SIGKILL + restart", database_name(db_url),
                               tables=(Completion, Feedback, Quarantine),
                               note=f"chat 503 in at most {max(waits):.3f}s; answering {recovered:.1f}s after the "
                                    "engine was ready")
    assert figures.acknowledged > 0
    assert (figures.lost, figures.duplicated) == (0, 0), figures
