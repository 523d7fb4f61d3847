"""Blue/green swaps of full-model versions under load, with real vLLM engines (issue 12).

    python -m tests.bench.bench_blue_green [--model DIR] [--clients 4] [--settle 20]

Starts the embedded stack (broker, the deployment's vLLM engine on the base model, the gateway as its
own process, which launches a vLLM engine for each full-model version as ``flywheel serve`` does),
registers two full-model versions (copies of the base model's folder, registered as ``flywheel models
register`` registers them), holds steady chat load (``--clients`` clients, every other one streaming,
each request from a new end user) and moves the champion through the admin routes:

1. promote v2: an engine starts beside the deployment's, passes its health check, takes the traffic;
2. promote v3: another engine starts; once it serves, v2's engine stops after its last request;
3. roll back: v2's engine starts again; v3's stops.

Launched engines take the machine's cores in turn, from the last down (``FLYWHEEL_ENGINE_LAUNCH_CPUS``:
on 2 cores the first on core 1, the next on core 0), so a starting engine does not share its core with
the serving one. After each move's first answer from the new version the load runs ``--settle`` seconds more (the old
engine's stop falls in it). A window of ``--settle`` seconds before the first move, with the deployment's
engine alone, is the baseline.

It prints the failed requests (must be 0; the exit status is 1 otherwise), per move the time from the
admin call to the first answer from the new version (an engine start: tens of seconds on 2 cores, not an
adapter's load) and the answers the old version gave meanwhile (it serves until the new engine passes its
check: expected, not stale), the answers/s while engines start against the baseline window, and the
gateway's engine launches, stops and launch failures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from feedback.apps import create_app as create_api_app
from feedback.db.session import make_engine, session_factory, transaction
from registry.promotion import Promotion
from tests.bench.bench_swaps import (
    ROLLBACK,
    Run,
    Serving,
    _Help,
    client,
    console,
    gateway_metrics,
    move,
    promote,
    report,
)
from tests.bench.stack import BenchStack, bench_stack
from trainer.base_model import build_tiny_model
from trainer.config import TrainerSettings
from trainer.registry import Registry

ENGINE_METRICS = ("flywheel_engine_launches_total", "flywheel_engine_stops_total",
                  "flywheel_engine_launch_failures_total", "flywheel_model_swap_failures_total")


async def measure(stack: BenchStack, admin_key: str, versions: list[str], args: argparse.Namespace,
                  progress: Progress, run: Run) -> None:
    """Hold the load, apply the three moves, each waiting for its first answer; fills ``run``."""
    stop = asyncio.Event()
    task = progress.add_task("baseline", total=None, status="")

    async def first_answer_after(index: int) -> bool:
        """Wait for the move's first answer from the new version; False after ``--timeout`` (reported as such)."""
        deadline = time.perf_counter() + args.timeout
        while run.first_answer(index) is None:
            if time.perf_counter() > deadline:
                console.print(f"[red]{run.moves[index].step.label}: no answer from the new version in "
                              f"{args.timeout:g} s[/red]; the moves stop here")
                return False
            failed = sum(1 for a in run.answers if a.error is not None)
            progress.update(task, status=f"answers {len(run.answers)} · failed {failed} · {run.serving} "
                                         "(its engine starting)")
            await asyncio.sleep(0.5)
        return True

    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with (httpx.AsyncClient(base_url=stack.gateway, headers={"Authorization": f"Bearer {stack.key}"},
                                  timeout=args.timeout, limits=limits) as http,
                httpx.AsyncClient(base_url=stack.gateway, headers={"Authorization": f"Bearer {admin_key}"},
                                  timeout=args.timeout) as admin):
        clients = [asyncio.create_task(client(http, stack.settings.public_model, f"user{n}", n % 2 == 1,
                                              args.max_tokens, stop, run)) for n in range(args.clients)]
        try:
            await asyncio.sleep(args.settle / 2)  # warm-up
            begin = time.perf_counter()
            await asyncio.sleep(args.settle)
            run.quiet.append((begin, time.perf_counter()))
            starting: list[tuple[float, float]] = []
            for index, step in enumerate((promote(versions[0]), promote(versions[1]), ROLLBACK)):
                progress.update(task, description=step.label)
                await move(admin, step, run)
                answered = await first_answer_after(index)
                sent = run.moves[index].sent
                starting.append((sent, sent + (run.first_answer(index) or args.timeout)))
                if not answered:
                    run.timed_out = True
                    break
                progress.update(task, status=f"{run.serving} serving; settling")
                await asyncio.sleep(args.settle)
            run.swaps = starting  # ``report`` compares the rate while engines start with the baseline window
        finally:
            stop.set()
            await asyncio.gather(*clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    parser.add_argument("--model", type=Path, default=None, help="HF model folder; none: a tiny random Llama")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients, every other one streaming")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (ignore_eos: always this many)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds of load after each move's first answer, "
                                                                   "and of the baseline window")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a request or an engine start may take")
    args = parser.parse_args()
    # The engines the gateway launches get the bench engine's memory and length (the gateway reads FLYWHEEL_*).
    os.environ.setdefault("FLYWHEEL_ENGINE_KV_CACHE_GB", "1")
    os.environ.setdefault("FLYWHEEL_ENGINE_MAX_MODEL_LEN", "1024")
    os.environ.setdefault("FLYWHEEL_SWAP_UNLOAD_GRACE_SECONDS", "5")
    # Each new engine on cores the serving one leaves free: vLLM binds the deployment's engine to the first cores
    # and reserves the last, so the sets go from the last core down (on 2 cores: 1, then 0, then 1).
    os.environ.setdefault("FLYWHEEL_ENGINE_LAUNCH_CPUS", "|".join(map(str, sorted(os.sched_getaffinity(0),
                                                                                  reverse=True))))

    with ExitStack() as running:
        tmp = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="flywheel-bench-blue-green-")))
        model = args.model or build_tiny_model(tmp / "tiny")
        with console.status("starting broker, engine and gateway…"):
            stack = running.enter_context(bench_stack(model))
        sessions = session_factory(make_engine(stack.settings.resolved_database_url))
        experiment = Registry(TrainerSettings(data_dir=stack.settings.data_dir, base_model=model),
                              sessions).experiment_id()
        registry = Promotion(stack.settings.resolved_mlflow_uri, stack.settings.registered_model, sessions)
        versions = []
        for name in ("blue", "green"):
            folder = shutil.copytree(model, tmp / name)  # the same weights under another name: what is swapped
            versions.append(registry.register_full_model(experiment, folder, "cli:bench", f"{name} (bench)"))
        with transaction(sessions) as session:
            _, admin_key = create_api_app(session, "bench-ops", admin=True)
        with Progress(TextColumn("{task.description:<14}"), TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                      console=console) as progress:
            run = Run(serving=Serving(str(registry.champion().version)))
            asyncio.run(measure(stack, admin_key, versions, args, progress, run))
        failed = report(run, gateway_metrics(stack, ENGINE_METRICS))
    sys.exit(1 if failed or run.timed_out else 0)


if __name__ == "__main__":
    main()
