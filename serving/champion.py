"""Which model version answers: the registry's ``champion`` and ``canary`` aliases, followed without a restart.

The trainer and ops move aliases in MLflow; the gateway only reads them. Each version is
loaded into vLLM under its own name (vLLM's docs call in-place reloads risky), then the
route flips in one assignment: a request reads the route once when it starts, so requests
in flight finish on the version they began with.

A canary is followed the same way, with its percent: a user in its share (``serving.canary``)
is answered by it, everyone else by the champion. A canary that fails to load sends nobody to
it (counted in ``flywheel_model_swap_failures_total``) and never holds up the champion.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion

from registry.model_versions import CANARY, CHAMPION, adapter_artifact_path, download_adapter
from registry.promotion import Canary, Promotion
from serving.canary import in_canary
from serving.engine import EngineClient
from serving.metrics import CANARY_PERCENT, CANARY_VERSION, LIVE_VERSION, SWAP_FAILURES, SWAPS
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    version: str
    engine_model: str


@dataclass(frozen=True)
class CanaryRoute:
    """The loaded canary: where its users go, their share, and since when it runs."""

    route: Route
    percent: float
    since: datetime


class NoChampion(RuntimeError):
    """The registry has no champion yet: nothing can answer."""


class ChampionWatcher:
    def __init__(self, settings: ServingSettings, engine: EngineClient, registry: Promotion) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.adapter_dir = settings.data_dir / "adapters"
        self._route: Route | None = None
        self._canary: CanaryRoute | None = None
        self._lock = asyncio.Lock()
        self._sides = random.Random()

    @property
    def current(self) -> Route | None:
        return self._route

    @property
    def route(self) -> Route:
        if self._route is None:
            raise NoChampion(
                f"no '{CHAMPION}' version of '{self.settings.registered_model}' is loaded yet; "
                "`flywheel serve` registers the base model on first start"
            )
        return self._route

    @property
    def canary(self) -> CanaryRoute | None:
        return self._canary

    def routes_for(self, user: str | None, pairwise: bool) -> tuple[Route, ...]:
        """The version answering each answer of one request: one route, or two (A, B) for a pair.

        A user in the canary's share gets the canary; in a pair, one side is the champion and the
        other the canary, which side is A drawn at random (each answer records its version). A user
        outside the share never sees the canary, so its exposure stays at its percent.
        """
        champion, canary = self.route, self._canary
        chosen = canary is not None and in_canary(user, canary.route.version, canary.percent)
        if not pairwise:
            return (canary.route,) if chosen and canary is not None else (champion,)
        if not chosen or canary is None:
            return champion, champion
        return (champion, canary.route) if self._sides.random() < 0.5 else (canary.route, champion)

    async def refresh(self) -> Route | None:
        """Read the aliases; if one moved, load the new version into the engine, then switch."""
        async with self._lock:
            version = await asyncio.to_thread(self.registry.alias_version, CHAMPION)
            if version is None:
                if self._route is None:
                    log.warning("the registry has no %s version of %r yet", CHAMPION, self.settings.registered_model)
                return self._route
            failed: Exception | None = None
            if self._route is None or self._route.version != str(version.version):
                try:
                    route = await self._load(version)
                except Exception as exc:  # the canary is still followed; the caller sees the champion's failure
                    failed = exc
                else:
                    previous, self._route = self._route, route
                    SWAPS.inc()
                    LIVE_VERSION.set(float(route.version))
                    log.info("champion is now version %s (was %s)", route.version, previous and previous.version)
            await self._refresh_canary()
            if failed is not None:
                raise failed
            return self._route

    async def _refresh_canary(self) -> None:
        """Follow the canary alias and percent; a canary that cannot load gets no users, the champion stays."""
        try:
            canary = await asyncio.to_thread(self.registry.canary)
            self._canary = await self._canary_route(canary)
        except Exception:
            SWAP_FAILURES.inc()
            self._canary = None
            log.exception("could not load the %s version; every user gets the champion", CANARY)
        CANARY_VERSION.set(float(self._canary.route.version) if self._canary else 0)
        CANARY_PERCENT.set(self._canary.percent if self._canary else 0)

    async def _canary_route(self, canary: Canary | None) -> CanaryRoute | None:
        if canary is None or canary.percent <= 0 or self._route is None or canary.version == self._route.version:
            return None
        current = self._canary
        if current is not None and current.route.version == canary.version:
            route = current.route
        else:
            route = await self._load(await asyncio.to_thread(self.registry.version, canary.version))
            log.info("canary is now version %s at %g %%", canary.version, canary.percent)
        return CanaryRoute(route, canary.percent, canary.since)

    async def run(self) -> None:
        """Poll forever; a failed swap keeps the current route and is retried on the next poll."""
        while True:
            try:
                await self.refresh()
            except Exception:
                SWAP_FAILURES.inc()
                log.exception("could not switch to the new champion; still serving %s", self._route)
            await asyncio.sleep(self.settings.swap_poll_seconds)

    async def _load(self, version: ModelVersion) -> Route:
        """Load a version into the engine; a failure is also recorded on the version in the registry."""
        try:
            route = await self._load_into_engine(version)
        except Exception as exc:
            where = f"gateway {self.settings.host}:{self.settings.port}"
            message = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, {where}: {type(exc).__name__}: {exc}"
            await asyncio.to_thread(self.registry.mark_load_error, version, message)
            raise
        await asyncio.to_thread(self.registry.mark_load_error, version, None)
        return route

    async def _load_into_engine(self, version: ModelVersion) -> Route:
        if adapter_artifact_path(version) is None:
            return Route(str(version.version), self.settings.base_engine_model)
        dest = self.adapter_dir / f"v{version.version}"
        path = await asyncio.to_thread(download_adapter, self.registry.client, version, dest)
        name = self.settings.version_engine_model(str(version.version))
        await self.engine.load_adapter(name, path)
        return Route(str(version.version), name)
