"""The gateway's vLLM launcher (full-model versions, blue/green): what it starts, and how a dead start shows.

No vLLM starts here: the launcher's process is built as for vLLM, then its program is swapped for a
Python one-liner that prints and exits, so the test sees the argv it would run and the process
lifecycle (guard, log, exit) it really goes through.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from flywheel.stack import engine as stack_engine
from flywheel.stack.engine import VllmLauncher, vllm_process
from flywheel.stack.supervise import ManagedProcess, wait_for
from serving.engines import EngineSpec
from serving.settings import ServingSettings


def test_a_launched_engine_gets_its_own_port_and_name_and_reports_its_exit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ServingSettings(_env_file=None, data_dir=tmp_path, registered_model="policy")  # type: ignore[call-arg]
    built: list[tuple[list[str], ManagedProcess]] = []

    def no_vllm(settings: ServingSettings, model_dir: Path, log_path: Path, env: Mapping[str, str] | None = None,
                port: int | None = None, served_name: str | None = None) -> ManagedProcess:
        process = vllm_process(settings, model_dir, log_path, env, port, served_name)
        built.append((process.argv, process))
        process.argv = [sys.executable, "-c", "print('no engine here'); raise SystemExit(3)"]
        return process

    monkeypatch.setattr(stack_engine, "vllm_process", no_vllm)
    launched = asyncio.run(VllmLauncher(settings).launch(EngineSpec("7", tmp_path / "model", "policy-v7")))
    (argv, process), = built
    port = argv[argv.index("--port") + 1]
    assert port != str(settings.engine_port) and launched.url == f"http://127.0.0.1:{port}"
    assert argv[argv.index("--served-model-name") + 1] == "policy-v7"
    assert argv[argv.index("--model") + 1] == str(tmp_path / "model") and "--enable-lora" in argv
    assert process.log_path == tmp_path / "logs" / "engine-v7.log"
    wait_for(lambda: launched.exited() is not None, 20, "the process's exit", interval=0.1)
    assert "no engine here" in (launched.exited() or "")
    asyncio.run(launched.stop())  # stopping an exited engine is a no-op


def test_launched_engines_take_the_configured_core_sets_in_turn(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A blue/green swap runs the new engine beside the serving one: each launch binds the next core set, so the two
    do not share cores; with none configured vLLM chooses (no binding passed)."""
    binds: list[str | None] = []

    def no_vllm(settings: ServingSettings, model_dir: Path, log_path: Path, env: Mapping[str, str] | None = None,
                port: int | None = None, served_name: str | None = None) -> ManagedProcess:
        process = vllm_process(settings, model_dir, log_path, env, port, served_name)
        binds.append((env or {}).get("VLLM_CPU_OMP_THREADS_BIND"))
        process.argv = [sys.executable, "-c", "raise SystemExit(0)"]
        return process

    monkeypatch.setattr(stack_engine, "vllm_process", no_vllm)
    for cpus, expected in (("1|0", ["1", "0", "1"]), ("", [None, None, None])):
        binds.clear()
        settings = ServingSettings(_env_file=None, data_dir=tmp_path, engine_launch_cpus=cpus)  # type: ignore[call-arg]
        launcher = VllmLauncher(settings)
        engines = [asyncio.run(launcher.launch(EngineSpec(version, tmp_path / "model", f"policy-v{version}")))
                   for version in ("2", "3", "2")]
        assert binds == expected
        wait_for(lambda: all(e.exited() is not None for e in engines), 20, "the exits", interval=0.1)  # noqa: B023
