"""The producer recovers by itself after a broker restart, and the gateway's outbox loses nothing meanwhile.

A private Tansu broker is killed (SIGKILL) and started again on the same port; being a memory
broker, it comes back without the topic and without the producer's id, which used to leave the
gateway's idempotent producer failing every send until the gateway restarted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaAdminClient

from feedback.producer import BrokerUnavailable, EventProducer
from feedback.settings import CommonSettings
from flywheel.stack.broker import tansu_process
from flywheel.stack.supervise import ManagedProcess, free_port, wait_for
from serving.app import create_app
from tests.conftest import EventBuilder
from tests.feedback.test_kafka import metric, read_all
from tests.serving.conftest import Gateway, gateway_settings, running_gateway

TIMEOUT_S = 2.0  # kafka_send_timeout_s here: the longest any request may wait on a dead broker


class Broker:
    """A private Tansu that a test may kill and start again on the same port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.starts = 0
        self.process = self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ManagedProcess:
        self.starts += 1
        self.process = tansu_process(self.port, self.log_dir / f"tansu-{self.starts}.log").start().wait_ready()
        return self.process

    def kill(self) -> None:
        assert self.process.proc is not None
        os.killpg(self.process.proc.pid, signal.SIGKILL)
        self.process.proc.wait()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "broker")
    yield broker
    broker.process.stop()


def timed(action: object) -> tuple[float, object]:
    started = time.monotonic()
    assert callable(action)
    return time.monotonic() - started, action()


def test_the_producer_rebuilds_itself_after_a_broker_restart(private_broker: Broker, build: EventBuilder) -> None:
    settings = CommonSettings(_env_file=None, kafka_bootstrap_servers=private_broker.address,  # type: ignore[call-arg]
                              kafka_topic="events", kafka_partitions=3, kafka_send_timeout_s=TIMEOUT_S)
    producer = EventProducer(settings)
    send = lambda: asyncio.run(producer.send_many([build.completion(1)]))  # noqa: E731
    send()
    started_before = metric("flywheel_producer_rebuilds_total", outcome="started")

    private_broker.kill()
    for bound in (TIMEOUT_S + 1, 0.2):  # the first send waits out the timeout, the next fail at once
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            send()
        assert time.monotonic() - started < bound
    assert not producer.available
    assert metric("flywheel_producer_rebuilds_total", outcome="started") == started_before + 1

    private_broker.start()
    wait_for(lambda: producer.available, 30, "producer rebuilt")
    send()
    admin = KafkaAdminClient(bootstrap_servers=private_broker.address)
    [topic] = admin.describe_topics(["events"])  # re-created by the producer with its partitions, not the broker's
    admin.close()
    assert len(topic["partitions"]) == 3
    producer.close()


@pytest.fixture
def gateway_on_private_broker(private_broker: Broker, db_url: str, tmp_path: Path,
                              mlflow_uri: str) -> Iterator[Gateway]:
    settings = gateway_settings(db_url, private_broker.address, tmp_path / "data", mlflow_uri,
                                kafka_send_timeout_s=TIMEOUT_S)
    yield from running_gateway(settings)


def votes(n: int, prefix: str) -> list[dict[str, str]]:
    return [{"type": "thumbs", "response_id": "resp_" + "0" * 32, "rating": "up", "user_id": "u1",
             "event_id": f"{prefix}-{i}"} for i in range(n)]


def on_the_broker(gateway: Gateway, expected: int) -> list[str]:
    """The event ids on the gateway's topic, in offset order per partition."""
    return [json.loads(r.value)["event_id"] for r in read_all(gateway.settings, expected)]  # type: ignore[arg-type]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the broker, not the database, is under test
def test_the_outbox_keeps_what_the_broker_forgot(gateway_on_private_broker: Gateway, private_broker: Broker) -> None:
    """Votes acknowledged before a memory broker dies, and while it is down, are all on the restarted broker."""
    gateway = gateway_on_private_broker
    before, during = votes(5, "before"), votes(5, "during")
    for vote in before:
        assert gateway.post("/v1/feedback", vote).status_code == 202
    wait_for(lambda: gateway.client.get("/readyz").json()["outbox_depth"] == 0, 10, "outbox delivered")
    assert sorted(on_the_broker(gateway, 5)) == sorted(v["event_id"] for v in before)
    replayed_before = metric("flywheel_outbox_replayed_total")

    private_broker.kill()
    for vote in during:  # acknowledged at once from the outbox, however long the broker is away
        started = time.monotonic()
        assert gateway.post("/v1/feedback", vote).status_code == 202
        assert time.monotonic() - started < 0.5
    wait_for(lambda: gateway.client.get("/readyz").json()["checks"]["broker"] is False, TIMEOUT_S * 3,
             "readyz sees the broker gone")
    ready = gateway.client.get("/readyz").json()
    assert ready["outbox_depth"] == 5 and metric("flywheel_outbox_depth") == 5

    private_broker.start()
    wait_for(lambda: gateway.client.get("/readyz").json()["outbox_depth"] == 0, 30, "outbox delivered again")
    ids = on_the_broker(gateway, 10)  # the broker lost "before"; the outbox sent it again, in order, then "during"
    assert sorted(ids) == sorted(v["event_id"] for v in before + during)
    assert metric("flywheel_outbox_replayed_total") >= replayed_before + 5
    wait_for(lambda: gateway.client.get("/readyz").json()["checks"]["broker"], 10, "readyz sees the broker")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_full_outbox_refuses_and_a_restarted_gateway_delivers_what_it_held(
    private_broker: Broker, db_url: str, tmp_path: Path, mlflow_uri: str
) -> None:
    settings = gateway_settings(db_url, private_broker.address, tmp_path / "data", mlflow_uri,
                                kafka_send_timeout_s=TIMEOUT_S, outbox_max_events=3)
    pending = votes(4, "held")
    for gateway in running_gateway(settings):
        private_broker.kill()
        failures = metric("flywheel_record_failures_total", kind="thumbs")
        assert [gateway.post("/v1/feedback", v).status_code for v in pending[:3]] == [202] * 3
        refused = gateway.post("/v1/feedback", pending[3])
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "outbox" in refused.json()["error"]["message"]
        assert metric("flywheel_record_failures_total", kind="thumbs") == failures + 1
        ready = gateway.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["outbox"] is False
    private_broker.start()  # a new gateway on the same data dir finds the three in the file and delivers them
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").json()["outbox_depth"] == 0, 30, "outbox delivered")
    assert sorted(on_the_broker(gateway, 3)) == [v["event_id"] for v in pending[:3]]
