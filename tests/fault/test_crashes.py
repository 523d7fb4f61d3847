"""Real faults under a numbered stream of votes: nothing acknowledged is lost, nothing is stored twice.

Each test runs the gateway and the worker as ``python -m flywheel serve|worker`` processes on a private
Tansu broker and a fresh SQLite or PostgreSQL database, sends votes through the gateway from four
threads while it breaks something for real, repairs it, and counts every acknowledged event id in the
database (``feedback`` and ``quarantine``: a vote is stored in exactly one of them).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from serving.settings import ServingSettings
from tests.fault.conftest import TcpProxy, sqlite_write_lock
from tests.fault.harness import (
    Figures,
    Load,
    Stack,
    database_name,
    running_stack,
    sigkill,
    sqlite_path,
    supervised,
    wait_mid_batch,
)
from tests.serving.test_broker_restart import Broker

pytestmark = pytest.mark.fault

Settings = Callable[[str], ServingSettings]


def check(figures: Figures) -> None:
    assert figures.acknowledged > 0
    assert (figures.lost, figures.duplicated) == (0, 0), figures


def test_worker_sigkilled_mid_batch(db_url: str, stack_settings: Settings) -> None:
    """The worker is SIGKILLed three times while it stores a backlog, and started again each time."""
    with running_stack(stack_settings(db_url), db_url) as stack:
        with Load(stack, "wk") as load:
            for _ in range(3):
                load.wait_acknowledged(200)
                wait_mid_batch(stack, load)
                sigkill(stack.worker)
                load.wait_acknowledged(50)  # the gateway keeps acknowledging while no worker runs
                stack.worker.start()
            load.wait_acknowledged(200)
        figures = stack.settle(load, "worker SIGKILL x3 mid-batch", database_name(db_url))
    check(figures)


def test_broker_sigkilled_and_restarted(db_url: str, stack_settings: Settings, private_broker: Broker) -> None:
    """The memory broker is SIGKILLed twice (it forgets topics, offsets and every record) and started again.

    The worker runs under a ``Supervisor`` as in ``flywheel up``: a consumer that loses its broker may raise out
    of ``poll`` (kafka-python's coordinator lookup: ECONNREFUSED), which ends the worker process; its supervisor
    starts it again and, the broker having forgotten the group's offsets, it re-reads from the start."""
    with running_stack(stack_settings(db_url), db_url) as stack, supervised(stack.worker) as supervisor:
        with Load(stack, "br") as load:
            for _ in range(2):
                load.wait_acknowledged(200)
                private_broker.kill()
                load.wait_acknowledged(100)  # acknowledged from the outbox while the broker is gone
                private_broker.start()
            load.wait_acknowledged(200)
        figures = stack.settle(load, "broker SIGKILL x2 + restart", database_name(db_url),
                               note=f"worker restarts by its supervisor: {supervisor.restarts['worker']}")
    check(figures)


OUTAGE_S = 10.0


def test_database_unreachable_for_a_while(db_url: str, stack_settings: Settings,
                                          request: pytest.FixtureRequest) -> None:
    """PostgreSQL: the gateway and worker reach it through a proxy the test stops for 10 s (every connection cut,
    new ones refused). SQLite (a file: never unreachable): another process holds its write lock for 10 s."""
    if db_url.startswith("sqlite"):
        with running_stack(stack_settings(db_url), db_url) as stack:
            with Load(stack, "db") as load:
                load.wait_acknowledged(200)
                wait_mid_batch(stack, load)
                with sqlite_write_lock(sqlite_path(db_url)):
                    during = stored_during(stack, OUTAGE_S)
                load.wait_acknowledged(200)
            figures = stack.settle(load, "database write-locked 10 s", database_name(db_url),
                                   note=f"stored during the outage: {during}")
        check(figures)
        return
    proxy, proxied = request.getfixturevalue("postgres_proxy")
    assert isinstance(proxy, TcpProxy)
    with running_stack(stack_settings(proxied), db_url) as stack:
        with Load(stack, "db") as load:
            load.wait_acknowledged(200)
            wait_mid_batch(stack, load)
            proxy.down()
            during = stored_during(stack, OUTAGE_S)
            proxy.up()
            load.wait_acknowledged(200)
        figures = stack.settle(load, "database unreachable 10 s", database_name(db_url),
                               note=f"stored during the outage: {during}; refused: {dict(load.refused) or 0}")
    check(figures)


def stored_during(stack: Stack, seconds: float) -> int:
    """How many events the worker stored in the next ``seconds`` (0 while the database is away)."""
    before = sum(stack.stored().values())
    time.sleep(seconds)
    return sum(stack.stored().values()) - before


def test_gateway_sigkilled_right_after_acknowledging(db_url: str, stack_settings: Settings) -> None:
    """The gateway is SIGKILLed the moment a 202 reaches a client, three times; the restarted process relays
    what the dead one had acknowledged but not yet put on the broker (its outbox file)."""
    held = []
    with running_stack(stack_settings(db_url), db_url) as stack:
        with Load(stack, "gw") as load:
            for _ in range(3):
                load.wait_acknowledged(200)
                load.acked.clear()
                load.acked.wait(10)
                sigkill(stack.gateway)
                held.append(stack.outbox_undelivered())
                stack.gateway.start().wait_ready()
            load.wait_acknowledged(200)
        figures = stack.settle(load, "gateway SIGKILL x3 after a 202", database_name(db_url),
                               note=f"undelivered in its outbox at each kill: {held}")
    check(figures)
