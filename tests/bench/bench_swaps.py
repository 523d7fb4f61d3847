"""Swaps under load: failed requests, alias move to first answer, throughput during swaps (issue 12).

    python -m tests.bench.bench_swaps [--model DIR] [--adapters 3] [--clients 8] [--cycles 1] [--swap-every 4]

Starts the embedded stack (broker, vLLM engine, the gateway as its own process), registers
``--adapters`` versions that are random LoRA adapters of the engine's base model (one adapter
file, a run and a version each, as a training round registers them), and holds steady chat load:
``--clients`` clients, every other one streaming, each sending one request after another as a new
end user. Ops' moves go through the gateway's admin routes, as ``flywheel models`` and ops' tools
send them. The timeline:

1. warm-up: the first adapter version is marked challenger, as a round marks a version that passed
   its gates, and promoted a ``--swap-every`` later (the base model is faster than any adapter, so
   every window serves adapters);
2. a window without swaps;
3. the swaps: per cycle and per other version X, X is marked challenger, then a ``--swap-every``
   later canary X at ``--percent``, promote X (the canary ends with it), roll back, canary X again,
   stop the canary; one move every ``--swap-every`` s;
4. a second window without swaps (the two quiet windows bracket the swaps, so a drift of the
   shared machine weighs on both sides alike).

It prints the failed requests (must be 0; the exit status is 1 otherwise), for each move the time
from sending it to the first answer from the version it sends a user to (among the users it
changed), answers still from the state before a move after the move returned (0 on one gateway),
and the throughput during the swaps against the quiet windows. Only a ratio taken in one run
means anything on these shared machines. The gateway loads a challenger's adapter before any move
to it; ``FLYWHEEL_SWAP_PRELOAD_CHALLENGER=false`` in the environment measures moves that load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feedback.apps import create_app as create_api_app
from feedback.db.session import make_engine, session_factory, transaction
from registry.model_versions import ADAPTER_ARTIFACT_PATH, ADAPTER_TAG
from serving.canary import version_for
from tests.bench.bench_engine_lora import make_adapter
from tests.bench.stack import BenchStack, bench_stack
from trainer.base_model import build_tiny_model
from trainer.config import TrainerSettings
from trainer.registry import BASE_MODEL_TAG, Registry

console = Console()
PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def register_adapter(registry: Registry, adapter: Path) -> str:
    """Register an adapter folder as a new version, as a training round does: a run holding it as its artifact."""
    client = registry.client
    run_id = client.create_run(registry.experiment_id(), run_name="swap-adapter").info.run_id
    client.log_artifacts(run_id, str(adapter), ADAPTER_ARTIFACT_PATH)
    client.set_terminated(run_id)
    tags = {ADAPTER_TAG: ADAPTER_ARTIFACT_PATH, BASE_MODEL_TAG: str(registry.settings.resolved_base_model)}
    return registry.register_candidate(run_id, ADAPTER_ARTIFACT_PATH, tags)


@dataclass(frozen=True)
class Serving:
    """What the registry says answers whom: the champion, and a canary for its share of users."""

    champion: str
    canary: str | None = None
    percent: float | None = None

    def version(self, user: str) -> str | None:
        return version_for(user, self.champion, self.canary, self.percent)

    def __str__(self) -> str:
        return f"champion v{self.champion}" + (f", canary v{self.canary} @ {self.percent:g} %" if self.canary else "")


@dataclass(frozen=True)
class Step:
    """One move by ops: its admin call, and the state it leaves given the state before and the call's answer."""

    label: str
    path: str
    body: dict[str, Any] | None
    after: Callable[[Serving, dict[str, Any]], Serving]


def promote(version: str) -> Step:
    # The schedule promotes only a running canary's version, which ends that canary.
    return Step(f"promote v{version}", f"/admin/models/{version}/promote", None, lambda _s, _a: Serving(version))


def canary(version: str, percent: float) -> Step:
    return Step(f"canary v{version} @ {percent:g} %", f"/admin/models/{version}/canary", {"percent": percent},
                lambda s, _a: Serving(s.champion, version, percent))


ROLLBACK = Step("rollback", "/admin/models/rollback", None, lambda _s, answer: Serving(answer["champion"]))
STOP = Step("canary stop", "/admin/models/canary/stop", None, lambda s, _a: Serving(s.champion))


def schedule(others: list[str], cycles: int, percent: float) -> list[tuple[str, list[Step]]]:
    """Per cycle and per other version X: (X, its moves: canary X, promote X, rollback, canary X, stop)."""
    return [(x, [canary(x, percent), promote(x), ROLLBACK, canary(x, percent), STOP])
            for _ in range(cycles) for x in others]


@dataclass
class Answer:
    """One chat request as its client saw it (``time.perf_counter`` seconds)."""

    user: str
    stream: bool
    sent: float
    first: float | None = None  # the first bytes of its answer (a whole answer, or a stream's first chunk)
    done: float | None = None
    version: str | None = None
    error: str | None = None


@dataclass
class Move:
    step: Step
    sent: float
    returned: float
    before: Serving
    after: Serving


@dataclass
class Run:
    """Everything the load and the moves left behind, and the windows to compare."""

    answers: list[Answer] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    quiet: list[tuple[float, float]] = field(default_factory=list)
    swaps: list[tuple[float, float]] = field(default_factory=list)  # the windows "during swaps"
    serving: Serving = Serving("1")  # the state now: the bootstrap's champion until the first move
    timed_out: bool = False  # a move's new version never answered within the bench's timeout

    def answered_in(self, window: tuple[float, float]) -> int:
        return sum(1 for a in self.answers if a.error is None and a.done is not None
                   and window[0] <= a.done < window[1])

    def rate(self, windows: list[tuple[float, float]]) -> float:
        return sum(self.answered_in(w) for w in windows) / sum(end - start for start, end in windows)

    def until_next(self, index: int) -> float:
        later = self.moves[index + 1:]
        return later[0].sent if later else float("inf")

    def first_answer(self, index: int) -> float | None:
        """Seconds from sending move ``index`` to the first answer, before the next move, from the version it sends a
        user to, among the users it changed (a request sent before it was routed by the state before)."""
        move, end = self.moves[index], self.until_next(index)
        times = [a.first - move.sent for a in self.answers
                 if a.first is not None and move.sent <= a.first < end and a.version is not None
                 and move.after.version(a.user) != move.before.version(a.user)
                 and a.version == move.after.version(a.user)]
        return min(times, default=None)

    def stale(self, index: int) -> int:
        """Answers to requests sent after move ``index`` returned (and before the next) from another version."""
        move, end = self.moves[index], self.until_next(index)
        return sum(1 for a in self.answers if move.returned <= a.sent < end and a.version is not None
                   and a.version != move.after.version(a.user))


async def ask(http: httpx.AsyncClient, model: str, user: str, stream: bool, max_tokens: int) -> Answer:
    """One chat as an app sends it; anything but a whole answer (status, in-band error, no ``[DONE]``) is a failure."""
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "user": user, "stream": stream}
    answer = Answer(user, stream, time.perf_counter())
    try:
        if not stream:
            response = await http.post("/v1/chat/completions", json=body)
            answer.first = answer.done = time.perf_counter()
            if response.status_code != 200:
                answer.error = f"{response.status_code} {response.text[:300]}"
            else:
                answer.version = response.json()["flywheel"]["model_version"]
            return answer
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                answer.error = f"{response.status_code} {(await response.aread()).decode(errors='replace')[:300]}"
                return answer
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    answer.done = time.perf_counter()
                    return answer
                chunk = json.loads(data)
                if "error" in chunk:
                    answer.error = f"in-band: {chunk['error']}"
                    return answer
                if answer.first is None:
                    answer.first, answer.version = time.perf_counter(), chunk["flywheel"]["model_version"]
        answer.error = "the stream ended without [DONE]"
    except (httpx.HTTPError, ValueError, KeyError) as exc:  # ValueError: not JSON; KeyError: not our answer
        answer.error = repr(exc)
    return answer


async def client(http: httpx.AsyncClient, model: str, name: str, stream: bool, max_tokens: int,
                 stop: asyncio.Event, run: Run) -> None:
    """One app client: a request after another, each from a new end user (so a canary gets its share)."""
    sent = 0
    while not stop.is_set():
        run.answers.append(await ask(http, model, f"{name}-{sent}", stream, max_tokens))
        sent += 1


async def move(admin: httpx.AsyncClient, step: Step, run: Run) -> None:
    """Apply one move through the admin routes; a refused move ends the benchmark (its schedule is wrong)."""
    before, sent = run.serving, time.perf_counter()
    response = await admin.post(step.path, json=step.body)
    returned = time.perf_counter()
    if response.status_code != 200:
        raise RuntimeError(f"{step.label} refused: {response.status_code} {response.text[:500]}")
    run.serving = step.after(before, response.json())
    run.moves.append(Move(step, sent, returned, before, run.serving))


async def measure(stack: BenchStack, admin_key: str, registry: Registry, versions: list[str],
                  args: argparse.Namespace, progress: Progress, run: Run) -> None:
    """Hold the load through the timeline (module docstring) and apply the moves; fills ``run``."""
    stop = asyncio.Event()
    cycles = schedule(versions[1:], args.cycles, args.percent)
    total = args.warmup + 2 * args.quiet + sum(len(steps) + 1 for _, steps in cycles) * args.swap_every
    task = progress.add_task("warm-up", total=total, status="")
    started = time.perf_counter()

    async def tick() -> None:
        while True:
            failed = sum(1 for a in run.answers if a.error is not None)
            progress.update(task, completed=min(time.perf_counter() - started, total),
                            status=f"answers {len(run.answers)} · failed {failed} · {run.serving}")
            await asyncio.sleep(0.5)

    async def proposed(version: str) -> None:
        """The trainer's part: a round registered ``version`` and it passed every gate; ops move to it later."""
        await asyncio.to_thread(registry.set_challenger, version, reason="passed every gate (bench)")
        await asyncio.sleep(args.swap_every)

    async def window(name: str, seconds: float) -> tuple[float, float]:
        progress.update(task, description=name)
        begin = time.perf_counter()
        await asyncio.sleep(seconds)
        return begin, time.perf_counter()

    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with (httpx.AsyncClient(base_url=stack.gateway, headers={"Authorization": f"Bearer {stack.key}"},
                                  timeout=args.timeout, limits=limits) as http,
                httpx.AsyncClient(base_url=stack.gateway, headers={"Authorization": f"Bearer {admin_key}"},
                                  timeout=args.timeout) as admin):
        ticker = asyncio.create_task(tick())
        clients = [asyncio.create_task(client(http, stack.settings.public_model, f"user{n}", n % 2 == 1,
                                              args.max_tokens, stop, run)) for n in range(args.clients)]
        try:
            await proposed(versions[0])
            await move(admin, promote(versions[0]), run)
            await window("warm-up", args.warmup)
            run.quiet.append(await window("without swaps", args.quiet))
            progress.update(task, description="swaps")
            begin = time.perf_counter()
            for version, steps in cycles:
                await proposed(version)
                for step in steps:
                    sent = time.perf_counter()
                    await move(admin, step, run)
                    await asyncio.sleep(max(0.0, sent + args.swap_every - time.perf_counter()))
            run.swaps = [(begin, time.perf_counter())]
            run.quiet.append(await window("without swaps", args.quiet))
        finally:
            stop.set()
            await asyncio.gather(*clients)
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


ADAPTER_METRICS = ("flywheel_adapter_unloads_total", "flywheel_adapter_unload_failures_total",
                   "flywheel_adapter_preload_failures_total", "flywheel_engine_adapters_loaded",
                   "flywheel_model_swap_failures_total")


def gateway_metrics(stack: BenchStack, wanted: tuple[str, ...] = ADAPTER_METRICS) -> dict[str, float]:
    """The gateway's counters and gauges named ``wanted`` at the end (``/metrics``)."""
    text = httpx.get(f"{stack.gateway}/metrics", timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name in wanted}


def report(run: Run, metrics: dict[str, float]) -> int:
    """Print the figures; the number of failed requests."""
    failed = [a for a in run.answers if a.error is not None]
    moves = Table("move", "at (s)", "call (s)", "to first answer (s)", "stale answers", title="moves")
    first: list[float] = []
    start = run.moves[0].sent
    for index, m in enumerate(run.moves):
        seconds = run.first_answer(index)
        if seconds is not None:
            first.append(seconds)
        moves.add_row(m.step.label, f"{m.sent - start:.1f}", f"{m.returned - m.sent:.2f}",
                      "none seen" if seconds is None else f"{seconds:.2f}", str(run.stale(index)))
    console.print(moves)

    quiet, during = run.rate(run.quiet), run.rate(run.swaps)
    summary = Table("figure", "value", title="swaps under load")
    streams = sum(a.stream for a in run.answers)
    summary.add_row("requests (streaming / not)", f"{len(run.answers)} ({streams} / {len(run.answers) - streams})")
    summary.add_row("failed requests (must be 0)", str(len(failed)))
    if first:
        summary.add_row("alias move to first answer, p50 / max (s)",
                        f"{statistics.median(first):.2f} / {max(first):.2f} ({len(first)} of {len(run.moves)} moves)")
    waits = [a.first - a.sent for a in run.answers if a.first is not None and a.error is None
             and any(start <= a.sent < end for start, end in run.quiet)]
    if waits:  # what a move's figure cannot go below: a request sent after it waits this long for its first bytes
        summary.add_row("first bytes of an answer without swaps, p50 (s)", f"{statistics.median(waits):.2f}")
    summary.add_row("answers/s without swaps", f"{quiet:.2f}")
    summary.add_row("answers/s during swaps", f"{during:.2f}")
    summary.add_row("throughput during / without swaps", f"{during / quiet:.2f}" if quiet else "-")
    for name, value in sorted(metrics.items()):
        summary.add_row(name, f"{value:g}")
    console.print(summary)
    for answer in failed[:10]:
        console.print(f"[red]failed[/red] {'stream' if answer.stream else 'whole'} {answer.user}: {answer.error}")
    return len(failed)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    parser.add_argument("--model", type=Path, default=None, help="HF model folder; none: a tiny random Llama")
    parser.add_argument("--adapters", type=int, default=3, help="adapter versions to swap between (at least 2)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients, every other one streaming")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (ignore_eos: always this many)")
    parser.add_argument("--cycles", type=int, default=1, help="rounds of the move schedule")
    parser.add_argument("--percent", type=float, default=50.0, help="the canaries' share of end users")
    parser.add_argument("--swap-every", type=float, default=4.0, help="seconds between two moves")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the first window")
    parser.add_argument("--quiet", type=float, default=20.0, help="seconds of each of the two windows without swaps")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a request or a move may take")
    args = parser.parse_args()
    if args.adapters < 2:
        parser.error("--adapters must be at least 2: one champion and one to swap to")

    with ExitStack() as running:
        tmp = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="flywheel-bench-swaps-")))
        with console.status("making a random LoRA adapter of the base model…"):
            model = args.model or build_tiny_model(tmp / "tiny")
            adapter = make_adapter(model, tmp / "adapter")
        with console.status("starting broker, engine and gateway…"):
            stack = running.enter_context(bench_stack(model))
        sessions = session_factory(make_engine(stack.settings.resolved_database_url))
        registry = Registry(TrainerSettings(data_dir=stack.settings.data_dir, base_model=model), sessions)
        versions = [register_adapter(registry, adapter) for _ in range(args.adapters)]
        with transaction(sessions) as session:
            _, admin_key = create_api_app(session, "bench-ops", admin=True)
        with Progress(TextColumn("{task.description:<14}"), BarColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[status]}"), console=console) as progress:
            run = Run(serving=Serving(str(registry.champion().version)))
            asyncio.run(measure(stack, admin_key, registry, versions, args, progress, run))
        failed = report(run, gateway_metrics(stack))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
