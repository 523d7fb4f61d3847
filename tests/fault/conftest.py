"""Fixtures of the fault suite (``make fault``; excluded from the default run by ``-m "not fault"``).

Each test gets a private Tansu broker it may kill (``tests/serving/test_broker_restart.py``), a fresh
database of each dialect (``db_url`` in ``tests/conftest.py``), and gateway settings on both
(``tests/serving/conftest.py``). The figures of every test are printed after the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flywheel.stack.supervise import free_port
from serving.settings import ServingSettings
from tests.fault.harness import FIGURES, SEND_TIMEOUT_S
from tests.serving.conftest import gateway_settings, mlflow_uri  # noqa: F401  (fixture)
from tests.serving.test_broker_restart import Broker, private_broker  # noqa: F401  (fixture)


@pytest.fixture
def stack_settings(private_broker: Broker, tmp_path: Path, mlflow_uri: str) -> Callable[..., ServingSettings]:  # noqa: F811
    """Gateway/worker settings on the private broker for a database URL (the test's own, or a proxy's)."""
    def make(database_url: str, **overrides: Any) -> ServingSettings:
        return gateway_settings(database_url, private_broker.address, tmp_path / "data", mlflow_uri,
                                **{"port": free_port(), "kafka_send_timeout_s": SEND_TIMEOUT_S} | overrides)
    return make


class TcpProxy:
    """A TCP proxy run by the test, to make a shared server unreachable without touching it.

    ``down()`` closes the listening port and cuts every open connection (clients see a reset, then a
    refused connect); ``up()`` listens again on the same port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tcp-proxy", daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.up()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def up(self) -> None:
        async def listen() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._call(listen())

    def down(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()
            for writer in list(self.connections):
                writer.transport.abort()
            self.connections.clear()
        self._call(close())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        self.connections -= {writer, upstream_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def postgres_proxy(db_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the test's PostgreSQL server, and the test's database URL through it."""
    url = sa.make_url(db_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.close()


@contextmanager
def sqlite_write_lock(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock (another process's long transaction): every writer waits until it is let go."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault figures: acknowledged events against the database")
    write(f"{'test':<34} {'database':<10} {'acked':>6} {'stored':>6} {'lost':>5} {'twice':>5} {'unacked':>7}  note")
    for f in FIGURES:
        write(f"{f.test:<34} {f.database:<10} {f.acknowledged:>6} {f.stored:>6} {f.lost:>5} {f.duplicated:>5} "
              f"{f.unacknowledged:>7}  {f.note}")
