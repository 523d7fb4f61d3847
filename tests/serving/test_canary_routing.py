"""Sticky canary assignment, the watcher following the canary alias, and pairs from two versions.

The assignment is a pure function of (user, canary version, percent). The watcher runs on a
real registry (MLflow store, SQLite and PostgreSQL audit); its versions are base-model versions
(no adapter), which route without an engine, so no vLLM runs here.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from feedback.db.session import make_engine, session_factory
from feedback.events import utcnow
from feedback.filters import Pipeline
from flywheel.cli.main import app as cli
from flywheel.stack.supervise import free_port
from registry.model_versions import CHAMPION, LOAD_ERROR_TAG
from serving.canary import canary_draw, in_canary, version_for
from serving.champion import ChampionWatcher
from serving.engine import EngineClient
from serving.live import publish_once
from serving.settings import ServingSettings
from serving.sides import joined, merged
from tests.conftest import EventBuilder
from tests.feedback.filtering import filter_settings, store
from tests.registry.conftest import promotions, registered_model
from tests.registry.test_live_numbers import traffic

USERS = [f"user-{i}" for i in range(20_000)]


def share(version: str, percent: float) -> float:
    return sum(in_canary(u, version, percent) for u in USERS) / len(USERS)


def within_binomial_noise(observed: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_assignment_is_sticky_converges_widens_and_redraws() -> None:
    for percent in (1, 5, 10, 50, 90):
        assert within_binomial_noise(share("2", percent), percent / 100, len(USERS)), percent
    assert all(in_canary(u, "2", 100) for u in USERS[:1000])
    assert not any(in_canary(u, "2", 0) or in_canary(None, "2", 100) for u in USERS[:1000])
    # Sticky: the draw is a function of its inputs alone (no state, the same on every gateway).
    assert [canary_draw(u, "2") for u in USERS[:100]] == [canary_draw(u, "2") for u in USERS[:100]]
    ten = {u for u in USERS if in_canary(u, "2", 10)}
    quarter = {u for u in USERS if in_canary(u, "2", 25)}
    assert ten < quarter  # widening only adds users
    # A new canary draws a fresh sample: its 10 % overlaps the last one's as independent draws do (1 %).
    again = {u for u in USERS if in_canary(u, "3", 10)}
    assert within_binomial_noise(len(ten & again) / len(USERS), 0.01, len(USERS))
    assert version_for("u", "1", None, None) == "1" and version_for(None, "1", "2", 100) == "1"
    assert version_for("u", "1", "2", 100) == "2"


def _chunk(side_text: str | None, finish: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if side_text is None and finish is None else [
        {"index": 0, "delta": {"content": side_text} if side_text else {}, "finish_reason": finish}]
    return {"id": "x", "object": "chat.completion.chunk", "choices": choices, **({"usage": usage} if usage else {})}


async def _side(texts: list[str], completion_tokens: int, delay: float) -> AsyncIterator[dict[str, Any]]:
    for text in texts:
        await asyncio.sleep(delay)
        yield _chunk(text)
    yield _chunk(None, finish="stop")
    yield _chunk(None, usage={"prompt_tokens": 7, "completion_tokens": completion_tokens, "total_tokens": 0})


def test_two_sides_merge_into_one_pair_stream() -> None:
    async def collect() -> list[dict[str, Any]]:
        return [c async for c in merged([_side(["A1", "A2", "A3"], 3, 0.01), _side(["B1", "B2"], 2, 0.015)])]

    chunks = asyncio.run(collect())
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
    assert texts == {0: "A1A2A3", 1: "B1B2"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert sum(1 for c in chunks if c.get("usage")) == 1  # each side's usage held back, one joined
    indexes = [choice["index"] for c in chunks for choice in c["choices"]]
    assert indexes.index(1) < len(indexes) - indexes[::-1].index(0) - 1  # interleaved as they arrive

    whole = joined([{"id": "a", "choices": [{"index": 0, "message": {"content": "a"}}],
                     "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
                    {"id": "b", "choices": [{"index": 0, "message": {"content": "b"}}],
                     "usage": {"prompt_tokens": 4, "completion_tokens": 3}}])
    assert [(c["index"], c["message"]["content"]) for c in whole["choices"]] == [(0, "a"), (1, "b")]
    assert whole["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_a_failing_side_fails_the_pair_and_stops_the_other() -> None:
    stopped = asyncio.Event()

    async def endless() -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                await asyncio.sleep(0.005)
                yield _chunk("x")
        finally:
            stopped.set()

    async def broken() -> AsyncIterator[dict[str, Any]]:
        await asyncio.sleep(0.02)
        raise RuntimeError("engine went away")
        yield _chunk("never")  # pragma: no cover - makes this an async generator

    async def run() -> None:
        with pytest.raises(RuntimeError, match="went away"):
            async for _ in merged([endless(), broken()]):
                pass
        await asyncio.wait_for(stopped.wait(), 2)

    asyncio.run(run())


@pytest.fixture
def watcher(db_url: str, tmp_path: Path) -> ChampionWatcher:
    registry = promotions(db_url, registered_model(tmp_path))()
    settings = ServingSettings(_env_file=None, data_dir=tmp_path / "data", database_url=db_url,  # type: ignore[call-arg]
                               registered_model=registry.name, engine_url=f"http://127.0.0.1:{free_port()}")
    registry._move(CHAMPION, "1", action="bootstrap", actor="system", reason=None)
    return ChampionWatcher(settings, EngineClient(settings.resolved_engine_url, 5), registry)


def test_the_watcher_sends_the_canary_share_and_pits_their_pairs(watcher: ChampionWatcher) -> None:
    asyncio.run(watcher.refresh())
    assert watcher.canary is None and {r.version for r in watcher.routes_for("u", True)} == {"1"}
    watcher.registry.start_canary("2", 30, "ops")
    asyncio.run(watcher.refresh())
    assert watcher.canary is not None and watcher.canary.percent == 30
    users = USERS[:4000]
    singles = Counter(watcher.routes_for(u, False)[0].version for u in users)
    assert within_binomial_noise(singles["2"] / len(users), 0.3, len(users))
    assert all(watcher.routes_for(u, False)[0].version == ("2" if in_canary(u, "2", 30) else "1") for u in users)
    assert watcher.routes_for(None, False)[0].version == "1"

    pairs = [tuple(r.version for r in watcher.routes_for(u, True)) for u in users]
    mixed = Counter(p for p, u in zip(pairs, users, strict=True) if in_canary(u, "2", 30))
    assert set(mixed) == {("1", "2"), ("2", "1")}  # champion against canary, either side A
    assert within_binomial_noise(mixed[("2", "1")] / mixed.total(), 0.5, mixed.total())
    assert all(p == ("1", "1") for p, u in zip(pairs, users, strict=True) if not in_canary(u, "2", 30))

    watcher.registry.start_canary("2", 60, "ops")
    asyncio.run(watcher.refresh())
    assert watcher.canary is not None and watcher.canary.percent == 60
    assert REGISTRY.get_sample_value("flywheel_canary_percent") == 60
    watcher.registry.stop_canary("ops")
    asyncio.run(watcher.refresh())
    assert watcher.canary is None and all(watcher.routes_for(u, False)[0].version == "1" for u in users[:500])
    assert REGISTRY.get_sample_value("flywheel_canary_percent") == 0


def test_a_canary_that_cannot_load_leaves_the_champion_serving(
    watcher: ChampionWatcher, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = watcher.registry
    registry.client.set_model_version_tag(registry.name, "3", "adapter", "adapter")  # names no run: nothing to fetch
    asyncio.run(watcher.refresh())
    failures = REGISTRY.get_sample_value("flywheel_model_swap_failures_total") or 0
    registry.start_canary("3", 100, "ops")
    route = asyncio.run(watcher.refresh())
    assert route is not None and route.version == "1"
    assert watcher.canary is None and watcher.routes_for("anyone", False)[0].version == "1"
    assert REGISTRY.get_sample_value("flywheel_model_swap_failures_total") == failures + 1
    # The failure shows on the version, in models list, and goes once the version loads.
    error = registry.version("3").tags[LOAD_ERROR_TAG]
    assert "LookupError" in error and "names no run" in error
    asyncio.run(watcher.refresh())  # retried on every poll; the first failure is kept
    assert registry.version("3").tags[LOAD_ERROR_TAG] == error
    if db_url.startswith("sqlite"):  # the CLI path is the same on both databases
        for name, value in (("DATABASE_URL", db_url), ("MLFLOW_TRACKING_URI", registry.client.tracking_uri),
                            ("REGISTERED_MODEL", registry.name)):
            monkeypatch.setenv(f"FLYWHEEL_{name}", value)
        listed = CliRunner().invoke(cli, ["models", "list"], env={"COLUMNS": "400"})
        assert listed.exit_code == 0 and "names no run" in listed.output, listed.output
    registry.client.set_model_version_tag(registry.name, "3", "adapter", "none")  # fixed: the base model
    asyncio.run(watcher.refresh())
    assert watcher.canary is not None and watcher.canary.route.version == "3"
    assert LOAD_ERROR_TAG not in registry.version("3").tags


def test_live_numbers_reach_prometheus(watcher: ChampionWatcher, db_url: str, make_app: Callable[[str], int],
                                       build: EventBuilder) -> None:
    """Thumbs per version and the canary's picks against the champion since it started, as gauges."""
    sessions = session_factory(make_engine(db_url))
    pipeline = Pipeline(filter_settings(timing_min_ms=0, timing_ms_per_char=0))
    app_id, other_app = make_app(db_url), make_app(db_url)
    store(sessions, pipeline, traffic(build, app_id, other_app))  # before the canary: not its evidence
    watcher.registry.start_canary("2", 50, "ops")
    asyncio.run(watcher.refresh())
    publish_once(watcher)
    assert REGISTRY.get_sample_value("flywheel_canary_pairwise_votes", {"outcome": "win"}) is None

    store(sessions, pipeline, traffic(build, app_id, other_app, at=utcnow() + timedelta(seconds=1)))
    publish_once(watcher)

    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert sample("flywheel_version_thumbs_votes", model_version="2") == 20
    assert sample("flywheel_version_thumbs_up_rate", model_version="2", bound="estimate") == pytest.approx(0.2)
    low = sample("flywheel_version_thumbs_up_rate", model_version="1", bound="low")
    assert low is not None and 0.3 < low < 0.6
    assert [sample("flywheel_canary_pairwise_votes", outcome=o) for o in ("win", "loss", "tie", "both_bad")] == [
        3, 5, 1, 1]
    assert sample("flywheel_canary_win_rate", bound="estimate") == pytest.approx(3 / 8)
    watcher.registry.stop_canary("ops")
    asyncio.run(watcher.refresh())
    publish_once(watcher)
    assert sample("flywheel_canary_win_rate", bound="estimate") is None
