"""Which model version answers: the registry's ``champion`` alias, followed without a restart.

The trainer and ops move aliases in MLflow; the gateway only reads them. Each version is
loaded into vLLM under its own name (vLLM's docs call in-place reloads risky), then the
route flips in one assignment: a request reads the route once when it starts, so requests
in flight finish on the version they began with.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion

from registry.model_versions import CHAMPION, adapter_artifact_path, download_adapter
from registry.promotion import Promotion
from serving.engine import EngineClient
from serving.metrics import LIVE_VERSION, SWAP_FAILURES, SWAPS
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    version: str
    engine_model: str


class NoChampion(RuntimeError):
    """The registry has no champion yet: nothing can answer."""


class ChampionWatcher:
    def __init__(self, settings: ServingSettings, engine: EngineClient, registry: Promotion) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.adapter_dir = settings.data_dir / "adapters"
        self._route: Route | None = None
        self._lock = asyncio.Lock()

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

    async def refresh(self) -> Route | None:
        """Read the alias; if it moved, load the new version into the engine, then switch."""
        async with self._lock:
            version = await asyncio.to_thread(self.registry.alias_version, CHAMPION)
            if version is None:
                if self._route is None:
                    log.warning("the registry has no %s version of %r yet", CHAMPION, self.settings.registered_model)
                return self._route
            if self._route is not None and self._route.version == str(version.version):
                return self._route
            route = await self._load(version)
            previous, self._route = self._route, route
            SWAPS.inc()
            LIVE_VERSION.set(float(route.version))
            log.info("champion is now version %s (was %s)", route.version, previous and previous.version)
            return route

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
        if adapter_artifact_path(version) is None:
            return Route(str(version.version), self.settings.base_engine_model)
        dest = self.adapter_dir / f"v{version.version}"
        path = await asyncio.to_thread(download_adapter, self.registry.client, version, dest)
        name = self.settings.version_engine_model(str(version.version))
        await self.engine.load_adapter(name, path)
        return Route(str(version.version), name)
