"""The challenger's adapter is loaded before any move routes to it (issue 12, swaps).

A move to a version whose adapter the engine has never seen waits for vLLM's load (seconds on
2 cores: the slowest move of the swap benchmark). The trainer marks a candidate that passed every
gate ``challenger``: the likely next promotion or canary. The gateway loads it ahead, routes nobody
to it, and keeps it loaded until the alias moves on.

The real gateway in front of ``tests.serving.fake_engine`` (an HTTP double of vLLM's server), as
in ``test_swap_unload``; versions 2 and 3 are adapters, version 1 the base model. SQLite only: the
store plays no part in a swap.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from feedback.db.session import upgrade
from flywheel.stack.supervise import wait_for
from registry.model_versions import LOAD_ERROR_TAG
from serving.engine import EngineClient, EngineError
from tests.bench.bench_swaps import register_adapter
from tests.serving.test_swap_unload import POLL, SETTLE, Swaps, metric, settles, swap_gateway


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'flywheel.db'}"
    upgrade(url)
    return url


def adapters(swaps: Swaps, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert [register_adapter(swaps.registry, adapter) for _ in range(2)] == ["2", "3"]


@pytest.fixture
def swaps(db_url: str, broker: str, tmp_path: Path, mlflow_uri: str) -> Iterator[Swaps]:
    with swap_gateway(db_url, broker, tmp_path / "data", mlflow_uri) as swaps:
        adapters(swaps, tmp_path)
        yield swaps


def loaded_ahead(swaps: Swaps, version: str) -> None:
    adapter = swaps.adapter(version)
    swaps.engine.wait_until(lambda: adapter in swaps.engine.loaded, timeout=5)


def test_the_challenger_is_loaded_ahead_and_its_promotion_loads_nothing(swaps: Swaps) -> None:
    engine, v2 = swaps.engine, swaps.adapter("2")
    swaps.registry.set_challenger("2", reason="passed every gate")
    loaded_ahead(swaps, "2")
    assert {swaps.chat(user=f"u{i}") for i in range(8)} == {"1"}, "loaded ahead, routed to by nobody"
    time.sleep(SETTLE)  # polls and the grace period go by: it stays, loaded once
    assert engine.loaded == {v2} and len(engine.done("load", v2)) == 1
    assert metric("flywheel_engine_adapters_loaded") == 1
    swaps.move("2/promote")
    assert swaps.chat() == "2"
    assert len(engine.done("load", v2)) == 1, "the move waited for a load the gateway had already done"


def test_a_canary_of_the_challenger_loads_nothing(swaps: Swaps) -> None:
    engine, v3 = swaps.engine, swaps.adapter("3")
    swaps.registry.set_challenger("3")
    loaded_ahead(swaps, "3")
    swaps.move("3/canary", {"percent": 100})
    assert swaps.chat(user="anyone") == "3" and len(engine.done("load", v3)) == 1


def test_a_challenger_replaced_is_unloaded_after_the_grace(swaps: Swaps) -> None:
    engine, v2, v3 = swaps.engine, swaps.adapter("2"), swaps.adapter("3")
    swaps.registry.set_challenger("2")
    loaded_ahead(swaps, "2")
    swaps.registry.set_challenger("3")  # the next round's candidate
    loaded_ahead(swaps, "3")
    engine.wait_until(lambda: v2 not in engine.loaded, timeout=5)
    assert engine.loaded == {v3} and len(engine.done("unload", v2)) == 1


def test_without_preloading_a_move_loads_the_challenger(db_url: str, broker: str, tmp_path: Path,
                                                        mlflow_uri: str) -> None:
    """The setting's other side: nothing is loaded before the move, which then loads it (the case preloading
    removes)."""
    with swap_gateway(db_url, broker, tmp_path / "data", mlflow_uri, swap_preload_challenger=False) as swaps:
        adapters(swaps, tmp_path)
        swaps.registry.set_challenger("2")
        time.sleep(SETTLE)
        assert swaps.engine.loaded == set()
        started = time.monotonic()
        swaps.move("2/promote")
        (load,) = swaps.engine.done("load", swaps.adapter("2"))
        assert load >= started and swaps.chat() == "2"


def test_a_challenger_that_fails_to_load_leaves_the_live_versions_and_is_shown(swaps: Swaps) -> None:
    engine, v2, v3 = swaps.engine, swaps.adapter("2"), swaps.adapter("3")
    failures = metric("flywheel_adapter_preload_failures_total")
    swaps.move("2/promote")
    engine.refuse_loads.add(v3)
    swaps.registry.set_challenger("3")
    wait_for(lambda: LOAD_ERROR_TAG in swaps.registry.version("3").tags, 5, "the load error recorded", interval=0.05)
    settles("flywheel_adapter_preload_failures_total", failures + 1)
    time.sleep(4 * POLL)  # not tried again every poll while the alias stays
    assert len(engine.done("load refused", v3)) == 1
    assert metric("flywheel_adapter_preload_failures_total") == failures + 1
    assert {swaps.chat(user=f"u{i}") for i in range(4)} == {"2"} and engine.loaded == {v2}
    engine.refuse_loads.clear()  # mended; the move tries again, loads it and clears the error
    swaps.move("3/promote")
    assert swaps.chat() == "3" and LOAD_ERROR_TAG not in swaps.registry.version("3").tags


def test_an_adapter_another_gateway_loaded_meanwhile_is_no_failure() -> None:
    """Gateways sharing an engine each load the challenger ahead; the one whose load comes second gets vLLM's
    400 "already loaded", which is no failure. A refusal of an adapter still not served is one."""
    served = ["base"]

    def engine(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": name} for name in served]})
        name = json.loads(request.read())["lora_name"]
        if name == "v2":
            served.append(name)  # the other gateway's load landed between this one's check and its load
        return httpx.Response(400, json={"error": {"message": f"The lora adapter '{name}' has already been loaded."}})

    async def load(name: str) -> None:
        client = EngineClient("http://engine", 5)
        client.http = httpx.AsyncClient(base_url="http://engine", transport=httpx.MockTransport(engine))
        try:
            await client.load_adapter(name, Path("/adapters") / name)
        finally:
            await client.close()

    asyncio.run(load("v2"))
    with pytest.raises(EngineError, match="refused adapter v3"):
        asyncio.run(load("v3"))
