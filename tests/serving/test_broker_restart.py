"""The producer recovers by itself after a broker restart, and the gateway says the truth meanwhile.

A private Tansu broker is killed (SIGKILL) and started again on the same port; being a memory
broker, it comes back without the topic and without the producer's id, which used to leave the
gateway's idempotent producer failing every send until the gateway restarted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from feedback.broker import tansu_process
from feedback.producer import BrokerUnavailable, EventProducer
from feedback.settings import CommonSettings
from feedback.supervise import ManagedProcess, free_port, wait_for
from tests.conftest import EventBuilder
from tests.feedback.test_kafka import metric
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


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the broker, not the database, is under test
def test_the_gateway_fails_fast_during_the_outage_and_recovers(
    gateway_on_private_broker: Gateway, private_broker: Broker
) -> None:
    gateway = gateway_on_private_broker
    vote = {"type": "thumbs", "response_id": "resp_" + "0" * 32, "rating": "up", "user_id": "u1"}
    chat = {"model": "flywheel", "messages": [{"role": "user", "content": "hi"}]}
    assert gateway.post("/v1/feedback", vote).status_code == 202
    assert gateway.client.get("/readyz").json()["checks"]["broker"] is True
    failures_before = metric("flywheel_record_failures_total", kind="thumbs")

    private_broker.kill()
    for bound in (TIMEOUT_S + 1, 0.5):
        started = time.monotonic()
        refused = gateway.post("/v1/feedback", vote)
        assert time.monotonic() - started < bound
        assert refused.status_code == 503 and refused.headers["Retry-After"]
        assert "nothing was accepted" in refused.json()["error"]["message"]
    assert metric("flywheel_record_failures_total", kind="thumbs") == failures_before + 2
    started = time.monotonic()
    answer = gateway.post("/v1/chat/completions", chat)  # refused before any engine time is spent
    assert answer.status_code == 503 and "broker" in answer.json()["error"]["message"]
    assert time.monotonic() - started < 0.5
    assert gateway.client.get("/readyz").json()["checks"]["broker"] is False  # not the probe's cached answer

    private_broker.start()
    wait_for(lambda: gateway.post("/v1/feedback", vote).status_code == 202, 30, "feedback accepted again")
    wait_for(lambda: gateway.client.get("/readyz").json()["checks"]["broker"], 10, "readyz sees the broker")
