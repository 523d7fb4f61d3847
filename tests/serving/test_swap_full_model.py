"""Full-model versions swapped blue/green (issue 12, swaps).

The real gateway (chat router, admin routes, ``ChampionWatcher``) in front of HTTP doubles of vLLM's
server (``tests.serving.fake_engine``): the deployment's engine serves the base model (version 1,
champion); versions 2 and 3 are full models registered as ``flywheel models register`` registers them,
for which the gateway asks a ``FakeLauncher`` for engines of their own. No vLLM runs.

The store plays no part in a swap, so these tests run on SQLite only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from feedback.db.models import AdminAction
from feedback.db.session import upgrade
from flywheel.cli.main import app as cli
from flywheel.stack.supervise import wait_for
from registry.model_versions import BASE_VERSION_TAG, LOAD_ERROR_TAG, MODEL_TAG, download_model
from registry.promotion import REGISTER_FULL_MODEL
from serving.champion import HEALTH_POLL_S
from serving.engines import EngineLaunchError
from tests.bench.bench_swaps import register_adapter
from tests.serving.fake_engine import FakeLauncher
from tests.serving.test_swap_unload import GRACE, POLL, SETTLE, Swaps, metric, settles, swap_gateway

STARTUP = 2.0  # engine_startup_timeout: how long a launched engine may fail its health check
STARTING = 4 * POLL + 2 * HEALTH_POLL_S  # several polls and health checks while an engine is starting


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'flywheel.db'}"
    upgrade(url)
    return url


@pytest.fixture
def launcher() -> Iterator[FakeLauncher]:
    launcher = FakeLauncher()
    yield launcher
    launcher.close()


@pytest.fixture
def swaps(db_url: str, broker: str, tmp_path: Path, mlflow_uri: str, launcher: FakeLauncher) -> Iterator[Swaps]:
    with swap_gateway(db_url, broker, tmp_path / "data", mlflow_uri, launcher, engine_startup_timeout=STARTUP,
                      engine_launch_retry_seconds=60) as swaps:
        registry = swaps.registry
        model = hf_folder(tmp_path / "model")
        assert [registry.register_full_model(registry.experiment_id(), model, "cli:ops") for _ in range(2)] == [
            "2", "3"]
        yield swaps


def hf_folder(path: Path) -> Path:
    """A folder that passes for an HF model (the doubles never read it)."""
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_a_full_model_takes_traffic_after_its_health_check_and_the_old_engine_stops_after_its_last_request(
        swaps: Swaps, launcher: FakeLauncher, tmp_path: Path) -> None:
    base, v2, v3 = swaps.engine, swaps.adapter("2"), swaps.adapter("3")
    launches, stops = metric("flywheel_engine_launches_total"), metric("flywheel_engine_stops_total")
    launcher.start_unhealthy = True
    swaps.move("2/promote")  # answered at once: the engine starts in the background
    e2 = launcher.wait_launched("2")
    time.sleep(STARTING)
    assert swaps.chat() == "1" and swaps.chat(stream=True) == "1"  # the live version serves meanwhile
    assert e2.calls == [], "asked before its health check passed"
    healthy_at = time.monotonic()
    e2.healthy.set()
    wait_for(lambda: swaps.chat() == "2", 5, "version 2 answering", interval=0.05)
    assert e2.done("answered", v2)[0] >= healthy_at
    settles("flywheel_engine_launches_total", launches + 1)

    launcher.start_unhealthy = False
    with ThreadPoolExecutor(1) as pool:
        pending = swaps.held_chat(pool, "2", engine=e2)
        swaps.move("3/promote")
        e3 = launcher.wait_launched("3")
        settles("flywheel_live_model_version", 3)  # a chat before would wait on version 2's held answers
        assert swaps.chat() == "3" and e3.done("answered", v3)  # new requests: the new engine
        time.sleep(SETTLE)
        assert e2.done("stopped", v2) == [], "stopped while an answer still used it"
        assert metric("flywheel_engines_launched") == 2
        e2.release(v2)
        assert pending.result(10) == "2"  # the held answer ends whole, on the engine it began on
    e2.wait_until(lambda: bool(e2.done("stopped", v2)))
    assert e2.done("stopped", v2)[0] >= e2.done("answered", v2)[-1] + GRACE  # the grace after its last request
    settles("flywheel_engine_stops_total", stops + 1)
    settles("flywheel_engines_launched", 1)
    assert swaps.chat(stream=True) == "3" and e3.done("stopped", v3) == []

    # An adapter trained on version 3 loads into version 3's engine, which it keeps running.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    v4 = register_adapter(swaps.registry, adapter)
    swaps.registry.client.set_model_version_tag(swaps.registry.name, v4, BASE_VERSION_TAG, "3")
    swaps.move(f"{v4}/promote")
    assert swaps.chat() == v4 and swaps.chat(stream=True) == v4
    assert len(e3.done("load", swaps.adapter(v4))) == 1 and base.done("load", swaps.adapter(v4)) == []
    time.sleep(SETTLE)
    assert e3.done("stopped", v3) == [] and len(launcher.launched) == 2


def test_a_full_model_canary_gets_its_share_once_healthy_and_its_engine_stops_with_it(
        swaps: Swaps, launcher: FakeLauncher) -> None:
    v2 = swaps.adapter("2")
    launcher.start_unhealthy = True
    swaps.move("2/canary", {"percent": 100})
    e2 = launcher.wait_launched("2")
    time.sleep(STARTING)
    assert swaps.chat(user="someone") == "1" and e2.calls == []
    e2.healthy.set()
    wait_for(lambda: swaps.chat(user="someone") == "2", 5, "the canary answering", interval=0.05)
    assert swaps.chat() == "1"  # a request without a user is not in the canary's share
    swaps.move("canary/stop")
    assert swaps.chat(user="someone") == "1"
    e2.wait_until(lambda: bool(e2.done("stopped", v2)))
    assert e2.done("stopped", v2)[0] >= e2.done("answered", v2)[-1] + GRACE


def test_a_launched_engine_that_exits_is_launched_again(swaps: Swaps, launcher: FakeLauncher) -> None:
    v2, exits = swaps.adapter("2"), metric("flywheel_engine_exits_total")
    swaps.move("2/promote")
    first = launcher.wait_launched("2")
    settles("flywheel_live_model_version", 2)
    assert swaps.chat() == "2"
    first.killed.set()  # its process is gone
    second = launcher.wait_launched("2", 2)
    settles("flywheel_engine_exits_total", exits + 1)
    wait_for(lambda: swaps.chat() == "2" and bool(second.done("answered", v2)), 5, "the new engine answering",
             interval=0.05)
    time.sleep(STARTING)
    assert len(launcher.launched) == 2 and swaps.chat(stream=True) == "2"


@pytest.mark.parametrize("failure", ["launch", "health check", "exit"])
def test_a_failed_launch_leaves_the_champion_serving_and_is_counted(
        swaps: Swaps, launcher: FakeLauncher, failure: str, monkeypatch: pytest.MonkeyPatch) -> None:
    failed = metric("flywheel_engine_launch_failures_total")
    swap_failures = metric("flywheel_model_swap_failures_total")
    if failure == "launch":
        launcher.fail = EngineLaunchError("no room for a second engine")
    else:
        launcher.start_unhealthy = True  # for good: never passes within STARTUP
    swaps.move("2/promote")
    if failure == "exit":
        launcher.wait_launched("2").killed.set()  # its process died while starting
    assert swaps.chat() == "1" and swaps.chat(stream=True) == "1"
    settles("flywheel_engine_launch_failures_total", failed + 1)
    settles("flywheel_model_swap_failures_total", swap_failures + 1)  # the champion's swap failed
    wait_for(lambda: LOAD_ERROR_TAG in swaps.registry.version("2").tags, 5, "the load error recorded", interval=0.05)
    error = swaps.registry.version("2").tags[LOAD_ERROR_TAG]
    assert {"launch": "no room for a second engine", "health check": "did not pass its health check",
            "exit": "exited during start-up: killed"}[failure] in error
    time.sleep(STARTING)  # polls go on; no new launch within engine_launch_retry_seconds, nothing counted twice
    assert metric("flywheel_engine_launch_failures_total") == failed + 1
    assert metric("flywheel_model_swap_failures_total") == swap_failures + 1
    assert swaps.chat() == "1" and metric("flywheel_live_model_version") == 1
    if failure != "launch":  # the engine that failed its check is not left running
        (engine,) = launcher.engines("2")
        assert engine.done("stopped", swaps.adapter("2")) and engine.calls[0][0] == "stopped"
    for name, value in (("DATABASE_URL", swaps.gateway.settings.resolved_database_url),
                        ("MLFLOW_TRACKING_URI", swaps.registry.client.tracking_uri),
                        ("REGISTERED_MODEL", swaps.registry.name)):
        monkeypatch.setenv(f"FLYWHEEL_{name}", value)
    listed = CliRunner().invoke(cli, ["models", "list"], env={"COLUMNS": "400"})
    assert listed.exit_code == 0 and "EngineLaunchError" in listed.output, listed.output


def test_models_register_adds_an_audited_full_model_version(swaps: Swaps, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    registry, settings = swaps.registry, swaps.gateway.settings
    for name, value in (("DATABASE_URL", settings.resolved_database_url),
                        ("MLFLOW_TRACKING_URI", registry.client.tracking_uri),
                        ("REGISTERED_MODEL", registry.name), ("DATA_DIR", str(settings.data_dir)),
                        ("MLFLOW_EXPERIMENT", registry.settings.mlflow_experiment)):
        monkeypatch.setenv(f"FLYWHEEL_{name}", value)
    model = hf_folder(tmp_path / "distilled")
    done = CliRunner().invoke(cli, ["models", "register", str(model), "--actor", "cli:ops", "--reason", "distilled"])
    assert done.exit_code == 0, done.output
    version = registry.version("4")
    assert version.tags[MODEL_TAG] == "model" and version.tags["adapter"] == "none" and not version.aliases
    fetched = download_model(registry.client, version, tmp_path / "fetched")
    assert (fetched / "model.safetensors").read_bytes() == b"weights"
    with registry.factory() as session:
        (row,) = session.scalars(select(AdminAction).where(AdminAction.action == REGISTER_FULL_MODEL,
                                                           AdminAction.target == f"{registry.name}:v4")).all()
    assert row.actor == "cli:ops" and row.detail["reason"] == "distilled" and row.detail["source"] == str(model)
    (tmp_path / "empty").mkdir()
    refused = CliRunner().invoke(cli, ["models", "register", str(tmp_path / "empty")])
    assert refused.exit_code == 1 and "no config.json" in refused.output
