"""Old adapters leave the engine after their last request and a grace period (issue 12, swaps).

The real gateway (chat router, admin routes, ``ChampionWatcher`` and its unloader) in front of
``tests.serving.fake_engine``, a small HTTP double of vLLM's OpenAI server. No vLLM runs.
Version 1 is the base model; versions 2 and 3 are adapters registered as a training round
registers them (the double never reads their files).

The store plays no part in a swap, so these tests run on SQLite only.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from feedback.db.session import make_engine, session_factory, upgrade
from flywheel.stack.supervise import free_port, wait_for
from serving.engines import EngineLauncher
from tests.bench.bench_swaps import register_adapter
from tests.serving.conftest import Gateway, gateway_settings, running_gateway
from tests.serving.fake_engine import FakeEngine, serving
from trainer.config import TrainerSettings
from trainer.registry import Registry

GRACE = 0.5  # swap_unload_grace_seconds
POLL = 0.2  # swap_poll_seconds: also the wait before an unload is tried again
SETTLE = 4 * GRACE  # long enough for any unload that is due to have happened
CHAT = {"model": "flywheel", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'flywheel.db'}"
    upgrade(url)
    return url


@dataclass
class Swaps:
    gateway: Gateway
    engine: FakeEngine  # the deployment's engine: the base model and adapters trained on it
    registry: Registry

    def adapter(self, version: str) -> str:
        return self.gateway.settings.version_engine_model(version)

    def move(self, path: str, body: dict[str, Any] | None = None) -> None:
        response = self.gateway.post(f"/admin/models/{path}", body, app="ops")
        assert response.status_code == 200, response.text

    def chat(self, stream: bool = False, user: str | None = None) -> str:
        """One chat through the gateway; the version that answered it (a stream read to its end)."""
        body = {**CHAT, "stream": stream, **({"user": user} if user else {})}
        if not stream:
            response = self.gateway.post("/v1/chat/completions", body)
            assert response.status_code == 200, response.text
            return str(response.json()["flywheel"]["model_version"])
        with self.gateway.client.stream("POST", "/v1/chat/completions", json=body,
                                        headers=self.gateway.auth("app")) as response:
            assert response.status_code == 200
            lines = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
        assert lines[-1] == "[DONE]", lines
        return str(json.loads(lines[0])["flywheel"]["model_version"])

    def held_chat(self, pool: ThreadPoolExecutor, version: str, stream: bool = False,
                  engine: FakeEngine | None = None) -> Future[str]:
        """A chat answered by ``version``'s adapter (or full model), kept open by its engine (default: the base
        model's) until the test releases it."""
        engine = engine or self.engine
        adapter = self.adapter(version)
        engine.hold(adapter)
        pending = pool.submit(self.chat, stream)
        engine.wait_until(lambda: engine.open[adapter] == 1)
        return pending


@contextmanager
def swap_gateway(db_url: str, broker: str, data_dir: Path, mlflow_uri: str, launcher: EngineLauncher | None = None,
                 **overrides: Any) -> Iterator[Swaps]:
    """The gateway in front of a ``FakeEngine`` serving the base model (version 1, champion); ``launcher`` starts
    engines for full-model versions."""
    port = free_port()
    settings = gateway_settings(db_url, broker, data_dir, mlflow_uri, engine_url=f"http://127.0.0.1:{port}",
                                swap_unload_grace_seconds=GRACE, swap_poll_seconds=POLL, canary_check_seconds=0,
                                **overrides)
    trainer_settings = TrainerSettings(_env_file=None, data_dir=settings.data_dir,  # type: ignore[call-arg]
                                       database_url=db_url, mlflow_tracking_uri=mlflow_uri,
                                       registered_model=settings.registered_model,
                                       mlflow_experiment=f"swaps-{uuid.uuid4().hex[:8]}")
    registry = Registry(trainer_settings, session_factory(make_engine(db_url)))
    assert registry.ensure_bootstrap() == "1"  # the base model, champion
    engine = FakeEngine(settings.base_engine_model)
    with serving(engine, port):
        for gateway in running_gateway(settings, launcher):
            yield Swaps(gateway, engine, registry)


@pytest.fixture
def swaps(db_url: str, broker: str, tmp_path: Path, mlflow_uri: str) -> Iterator[Swaps]:
    with swap_gateway(db_url, broker, tmp_path / "data", mlflow_uri) as swaps:
        adapter = tmp_path / "adapter"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("{}")
        assert [register_adapter(swaps.registry, adapter) for _ in range(2)] == ["2", "3"]
        yield swaps


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def settles(name: str, value: float) -> None:
    """The gateway counts an unload once the engine's answer reached it, a moment after the engine recorded it."""
    wait_for(lambda: metric(name) == value, 5, f"{name} == {value} (now {metric(name)})", interval=0.02)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_old_adapter_stays_while_an_answer_holds_it_and_goes_after_the_grace(swaps: Swaps, stream: bool) -> None:
    engine, v2, v3 = swaps.engine, swaps.adapter("2"), swaps.adapter("3")
    swaps.move("2/promote")
    assert swaps.chat() == "2" and engine.loaded == {v2}
    unloads = metric("flywheel_adapter_unloads_total")
    with ThreadPoolExecutor(1) as pool:
        pending = swaps.held_chat(pool, "2", stream)
        swaps.move("3/promote")
        assert swaps.chat(stream) == "3"  # new requests go to the new version at once
        time.sleep(SETTLE)
        assert engine.done("unload", v2) == [], "unloaded while an answer still used it"
        assert metric("flywheel_engine_adapters_loaded") == 2
        engine.release(v2)
        assert pending.result(10) == "2"  # the held answer ends whole, from the version it began on
    engine.wait_until(lambda: v2 not in engine.loaded)
    assert engine.done("unload", v2)[0] >= engine.done("answered", v2)[-1] + GRACE  # the grace after the end
    settles("flywheel_adapter_unloads_total", unloads + 1)
    settles("flywheel_engine_adapters_loaded", 1)
    assert engine.loaded == {v3} and swaps.chat() == "3"
    assert not [call for call in engine.calls if call[1] == engine.base]  # the base model is never unloaded


def test_a_stream_whose_client_left_lets_its_adapter_go(swaps: Swaps) -> None:
    engine, v2 = swaps.engine, swaps.adapter("2")
    swaps.move("2/promote")
    engine.hold(v2)
    with swaps.gateway.client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                                     headers=swaps.gateway.auth("app")) as response:
        lines = response.iter_lines()  # kept: dropping a half-read iterator closes the response
        assert next(lines).startswith("data:")  # the answer began: v2 is held
        swaps.move("3/promote")
        time.sleep(SETTLE)
        assert engine.done("unload", v2) == []
    # The client closed the stream before its end (the engine still holds the answer open).
    engine.wait_until(lambda: v2 not in engine.loaded)


def test_a_version_routed_to_again_before_its_unload_is_kept(swaps: Swaps) -> None:
    engine, v2, v3 = swaps.engine, swaps.adapter("2"), swaps.adapter("3")
    swaps.move("2/promote")
    with ThreadPoolExecutor(1) as pool:
        pending = swaps.held_chat(pool, "2")  # keeps v2 loaded however slow the moves are
        swaps.move("3/promote")
        swaps.move("rollback")  # v2 is champion again while still loaded: kept, v3 retires
        engine.release(v2)
        assert pending.result(10) == "2"
    engine.wait_until(lambda: v3 not in engine.loaded)
    time.sleep(SETTLE)
    assert engine.loaded == {v2} and engine.done("unload", v2) == []
    assert len(engine.done("load", v2)) == 1  # routed to again without a second load
    assert swaps.chat(stream=True) == "2"

    # A canary that becomes champion keeps its adapter; the champion it replaced goes.
    swaps.move("3/canary", {"percent": 100})  # v3 was unloaded: loaded again
    assert swaps.chat(user="someone") == "3" and len(engine.done("load", v3)) == 2
    swaps.move("3/promote")
    engine.wait_until(lambda: v2 not in engine.loaded)
    time.sleep(SETTLE)
    assert engine.loaded == {v3} and len(engine.done("load", v3)) == 2 and len(engine.done("unload", v3)) == 1
    # A stopped canary goes too.
    swaps.move("2/canary", {"percent": 50})
    swaps.move("canary/stop")
    engine.wait_until(lambda: engine.loaded == {v3})
    assert len(engine.done("unload", v2)) == 2


def test_a_failed_unload_is_retried_and_counted(swaps: Swaps) -> None:
    engine, v2 = swaps.engine, swaps.adapter("2")
    failures = metric("flywheel_adapter_unload_failures_total")
    engine.fail_unloads = 2
    swaps.move("2/promote")
    swaps.move("3/promote")
    engine.wait_until(lambda: v2 not in engine.loaded)
    failed, unloaded = engine.done("unload failed", v2), engine.done("unload", v2)
    assert len(failed) == 2 and len(unloaded) == 1
    assert failed[1] - failed[0] >= POLL - 0.05 and unloaded[0] - failed[1] >= POLL - 0.05  # tried again, not spun
    settles("flywheel_adapter_unload_failures_total", failures + 2)
    assert swaps.chat() == "3" and swaps.chat(stream=True) == "3"  # requests never saw it
