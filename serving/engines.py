"""The engines the gateway sends requests to, and how it gets one for a full-model version.

The deployment's engine (``FLYWHEEL_ENGINE_URL``, or the one ``flywheel up`` started) serves the
base model and every adapter trained on it; it belongs to the deployment, which restarts it when it
dies, so the gateway never stops it. A version that is a full model needs an engine of its own:
the gateway asks an ``EngineLauncher`` for one, waits for its health check, routes to it, and stops
it once nothing is routed to it any more (``serving.champion``). The launcher is injected: the
embedded stack's starts a vLLM process on this machine (``flywheel.stack.engine.VllmLauncher``),
tests give a double, another deployment could ask its orchestrator; ``serving`` imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from serving.engine import EngineClient


@dataclass(frozen=True)
class EngineSpec:
    """What a launched engine must serve: ``model_dir`` (an HF folder) under the name ``served_name``."""

    version: str
    model_dir: Path
    served_name: str


class LaunchedEngine(Protocol):
    """An engine a launcher started: where it listens, whether it died, how to stop it."""

    @property
    def url(self) -> str:
        """Its OpenAI server's base URL."""
        ...

    def exited(self) -> str | None:
        """None while it runs; once it has exited, why (e.g. the tail of its log), so a start-up stops waiting."""
        ...

    async def stop(self) -> None:
        """Stop it (requests still on it are cut: the gateway calls this only after the last one ended)."""
        ...


class EngineLauncher(Protocol):
    async def launch(self, spec: EngineSpec) -> LaunchedEngine:
        """Start an engine serving ``spec`` and return at once, before it is ready: the gateway health-checks it."""
        ...


class EngineLaunchError(RuntimeError):
    """An engine for a full-model version could not be started, or failed its health check in time."""


@dataclass(eq=False)
class Engine:
    """One engine the gateway talks to. ``launched`` is None for the deployment's own, which it never stops.

    Compared by identity: a relaunched engine for the same version is another engine.
    """

    name: str
    client: EngineClient
    launched: LaunchedEngine | None = None
