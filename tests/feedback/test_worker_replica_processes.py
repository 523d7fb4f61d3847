"""The benchmarks' worker replicas: real ``flywheel worker`` processes in one consumer group.

``tests/bench/measure_filters.py --replicas N`` measures the filters with N workers; these
tests check, without the engine, that what it starts is what it claims: N processes of one
group that split the topic's partitions, each built with exactly the filter settings asked for.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from feedback.db.session import upgrade
from feedback.filters import FilterSettings
from feedback.producer import EventProducer, ensure_topic
from serving.settings import ServingSettings
from tests.bench.stack import filter_env, worker_replicas
from tests.conftest import EventBuilder
from tests.feedback.test_filters_worker import verdicts_at
from tests.feedback.test_kafka import wait_until

REPLICAS = 3


def test_filter_env_gives_a_child_the_same_filter_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_FILTER_BOT_MIN_VOTES", "3")  # the parent's own setting must not leak through
    wanted = FilterSettings(_env_file=None, simulation=True, time_scale=0.1, bot_min_votes=11,  # type: ignore[call-arg]
                            enabled=False)
    for name, value in filter_env(wanted).items():
        monkeypatch.setenv(name, value)
    assert FilterSettings(_env_file=None) == wanted  # type: ignore[call-arg]


def test_replicas_join_one_group_and_split_the_partitions(
    broker: str, tmp_path: Path, make_app: Callable[..., int], build: EventBuilder, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tansu holds a group join for about half the session timeout: short, so the three join fast
    monkeypatch.setenv("FLYWHEEL_WORKER_SESSION_TIMEOUT_MS", "2000")
    monkeypatch.setenv("FLYWHEEL_WORKER_HEARTBEAT_INTERVAL_MS", "500")
    url = f"sqlite:///{tmp_path / 'flywheel.db'}"
    upgrade(url)
    app_id = make_app(url)
    config = ServingSettings(_env_file=None, data_dir=tmp_path, database_url=url,  # type: ignore[call-arg]
                             kafka_bootstrap_servers=broker, kafka_topic=f"test.replicas.{uuid.uuid4().hex[:12]}",
                             kafka_partitions=REPLICAS)
    ensure_topic(config)
    sent: list[str] = []
    with worker_replicas(config, FilterSettings(_env_file=None), REPLICAS) as replicas:  # type: ignore[call-arg]
        producer = EventProducer(config)
        try:
            # a replica is ready before it joins (its metrics start first): send waves until every one has joined
            # and handled some, as a live stream would
            deadline = time.monotonic() + 120
            while not all(r.events() for r in replicas):
                assert time.monotonic() < deadline, [r.events() for r in replicas]
                answers = [build.completion(app_id) for _ in range(5)]
                votes = [build.thumbs(app_id, a.response_id, user_id=f"u{n}") for n, a in enumerate(answers)]
                asyncio.run(producer.send_many([*answers, *votes]))
                sent += [v.event_id for v in votes]
                time.sleep(0.5)
        finally:
            producer.close()
        wait_until(lambda: set(verdicts_at(url)) >= set(sent), timeout=60)
        total = 2 * len(sent)
        wait_until(lambda: sum(r.events() for r in replicas) >= total, timeout=30)
        handled, partitions = [r.events() for r in replicas], [r.partitions() for r in replicas]
        assert all(r.process.alive for r in replicas)
    # one group: each event handled once (a rebalance may re-deliver a batch whose commit it refused); three
    # groups would each handle every event
    assert total <= sum(handled) < 1.5 * total, (handled, total)
    # every replica took part, and together they covered every partition
    assert all(handled) and set().union(*partitions) == set(range(REPLICAS)), (handled, partitions)
