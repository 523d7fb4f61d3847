"""Which model version answers: the registry's ``champion`` and ``canary`` aliases, followed without a restart.

The trainer and ops move aliases in MLflow; the gateway only reads them. Each version is
loaded into vLLM under its own name (vLLM's docs call in-place reloads risky), then the
route flips in one assignment: a request reads the route once when it starts, so requests
in flight finish on the version they began with.

A canary is followed the same way, with its percent: a user in its share (``serving.canary``)
is answered by it, everyone else by the champion. A canary that fails to load sends nobody to
it (counted in ``flywheel_model_swap_failures_total``) and never holds up the champion.

The engine holds a limited number of adapters, so old ones are unloaded: a request holds its
routes (``hold``) until the end of its answer, and an adapter that is neither champion nor canary
any more is unloaded (``unload_retired``) once no request holds it and a grace period has passed.
One that becomes champion or canary again before that keeps its route and is not loaded twice.

The ``challenger`` (the trainer's candidate that passed every gate, the likely next promotion or
canary) is loaded ahead, routed to by nobody, so the move that routes to it waits for no load: in
vLLM a first load takes seconds, most of a move's delay otherwise. It is kept loaded like the routed
versions, and retired like them once the alias moves on.

A version that is a full model, not an adapter, is swapped blue/green: it needs an engine of its
own, which an ``EngineLauncher`` starts in the background (a vLLM start takes about a minute, and
neither the poll nor an admin call waits for it). The route flips only once that engine passes its
health check; until then, and for good if it fails, the live version keeps serving. The old engine,
once nothing routes to it, is stopped like an old adapter is unloaded: after its last request and
the grace period. Adapters load into the engine that serves their base (tag ``base_version``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType

from mlflow.entities.model_registry import ModelVersion

from registry.model_versions import (
    CANARY,
    CHALLENGER,
    CHAMPION,
    adapter_artifact_path,
    base_version,
    download_adapter,
    download_model,
    model_artifact_path,
)
from registry.promotion import Canary, Promotion
from serving.canary import in_canary
from serving.engine import EngineClient
from serving.engines import Engine, EngineLauncher, EngineLaunchError, EngineSpec
from serving.metrics import (
    ADAPTER_PRELOAD_FAILURES,
    ADAPTER_UNLOAD_FAILURES,
    ADAPTER_UNLOADS,
    ADAPTERS_LOADED,
    CANARY_PERCENT,
    CANARY_VERSION,
    ENGINE_EXITS,
    ENGINE_LAUNCH_FAILURES,
    ENGINE_LAUNCHES,
    ENGINE_STOPS,
    ENGINES_LAUNCHED,
    LIVE_VERSION,
    SWAP_FAILURES,
    SWAPS,
)
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

HEALTH_POLL_S = 0.5
"""How often a launched engine's health check is tried until it passes."""


@dataclass(eq=False)
class Route:
    """A version as the engine serves it, and how many requests it is answering now.

    Compared by identity: an adapter has one route from its load to its unload (a version that
    comes back before its unload gets the same one), so its count covers every request on it.
    """

    version: str
    engine_model: str
    engine: Engine  # the engine serving ``engine_model``: the deployment's, or one launched for a full model
    in_flight: int = 0
    idle_since: float = field(default_factory=time.monotonic)  # when the count last fell to 0 (monotonic clock)


class RouteHold:
    """The routes answering one request, held from its start to the end of its answer.

    A held route stays loaded in the engine after it stops being champion or canary. Every path
    that ends an answer (done, failed, client gone) may call ``release``; only the first counts.
    """

    def __init__(self, routes: tuple[Route, ...], on_idle: Callable[[Route], None]) -> None:
        self.routes = routes
        self._held = set(routes)  # a pair answered twice by one route holds it once
        self._on_idle = on_idle
        for route in self._held:
            route.in_flight += 1

    def release(self) -> None:
        held, self._held = self._held, set()
        for route in held:
            route.in_flight -= 1
            if route.in_flight == 0:
                route.idle_since = time.monotonic()
                self._on_idle(route)

    def __enter__(self) -> RouteHold:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


@dataclass(frozen=True)
class CanaryRoute:
    """The loaded canary: where its users go, their share, and since when it runs."""

    route: Route
    percent: float
    since: datetime


class NoChampion(RuntimeError):
    """The registry has no champion yet: nothing can answer."""


class EngineNotReady(RuntimeError):
    """A version's engine is starting (or waits to be launched again after a failure): not a failure, not yet."""


@dataclass
class _LaunchFailure:
    """A launch that failed: raised once where the version is loaded (counted, logged, recorded on the version)."""

    error: Exception
    retry_at: float  # monotonic: no new launch before
    reported: bool = False


class ChampionWatcher:
    def __init__(self, settings: ServingSettings, engine: EngineClient, registry: Promotion,
                 launcher: EngineLauncher | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.base_engine = Engine("base", engine)  # the deployment's: never stopped here
        self.launcher = launcher
        self.registry = registry
        self.adapter_dir = settings.data_dir / "adapters"
        self.model_dir = settings.data_dir / "models"
        self._engines: dict[str, Route] = {}  # full-model version -> its route on the engine launched for it
        self._launches: dict[str, asyncio.Task[None]] = {}  # full-model version -> its engine starting
        self._launch_failures: dict[str, _LaunchFailure] = {}
        self._retired_engines: dict[Engine, float] = {}  # launched engines nothing routes to -> stop not before
        self._wake = asyncio.Event()  # a launch ended: read the aliases again now, not at the next poll
        self._route: Route | None = None
        self._canary: CanaryRoute | None = None
        self._ahead: Route | None = None  # the challenger's adapter, loaded before any alias routes to it
        self._ahead_failed: str | None = None  # the challenger version whose load failed: not tried every poll
        self._lock = asyncio.Lock()
        self._sides = random.Random()
        self._adapters: dict[str, Route] = {}  # engine name -> route: adapters this gateway loaded, not unloaded yet
        self._retired: dict[Route, float] = {}  # adapters neither champion nor canary -> unload not before (monotonic)
        self._unload_wanted = asyncio.Event()  # a route retired, or a retired route's last request ended

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

    def hold(self, user: str | None, pairwise: bool) -> RouteHold:
        """``routes_for``, held until the request's answer ends (release the hold): a held adapter stays loaded."""
        return RouteHold(self.routes_for(user, pairwise), self._idle)

    def _idle(self, route: Route) -> None:
        if route in self._retired or route.engine in self._retired_engines:
            self._unload_wanted.set()

    async def refresh(self) -> Route | None:
        """Read the aliases; if one moved, load the new version into the engine, then switch."""
        async with self._lock:
            version = await asyncio.to_thread(self.registry.alias_version, CHAMPION)
            if version is None:
                if self._route is None:
                    log.warning("the registry has no %s version of %r yet", CHAMPION, self.settings.registered_model)
                return self._route
            failed: Exception | None = None
            await self._forget_exited_engines()
            if self._route is None or self._route.version != str(version.version) or _exited(self._route):
                try:
                    route = await self._load(version)
                except EngineNotReady as exc:
                    log.debug("champion version %s is not served yet (%s); still serving %s", version.version, exc,
                              self._route and self._route.version)
                except Exception as exc:  # the canary is still followed; the caller sees the champion's failure
                    failed = exc
                else:
                    previous, self._route = self._route, route
                    SWAPS.inc()
                    LIVE_VERSION.set(float(route.version))
                    log.info("champion is now version %s (was %s)", route.version, previous and previous.version)
            await self._refresh_canary()
            await self._load_challenger_ahead()
            self._retire_unrouted()
            if failed is not None:
                raise failed
            return self._route

    async def _refresh_canary(self) -> None:
        """Follow the canary alias and percent; a canary that cannot load gets no users, the champion stays."""
        try:
            canary = await asyncio.to_thread(self.registry.canary)
            self._canary = await self._canary_route(canary)
        except EngineNotReady as exc:
            self._canary = None
            log.debug("the canary is not served yet (%s); every user gets the champion", exc)
        except Exception:
            SWAP_FAILURES.inc()
            self._canary = None
            log.exception("could not load the %s version; every user gets the champion", CANARY)
        CANARY_VERSION.set(float(self._canary.route.version) if self._canary else 0)
        CANARY_PERCENT.set(self._canary.percent if self._canary else 0)

    async def _load_challenger_ahead(self) -> None:
        """Load the challenger's adapter if it is not loaded, so a move to it does not wait for the load.

        Only an adapter on an engine that is running: a full model (or an adapter of one whose engine is
        not up) would need an engine started on speculation, two cores' worth for a move that may never
        come. A failed load is counted, logged and recorded on the version (``models list`` shows it before
        anyone moves to it), and not tried again while the alias stays on that version; the move itself
        tries again and fails as it would have.
        """
        version = None
        if self.settings.swap_preload_challenger:
            version = await asyncio.to_thread(self.registry.alias_version, CHALLENGER)
        if version is None or adapter_artifact_path(version) is None or model_artifact_path(version) is not None:
            self._ahead = None
            return
        key = str(version.version)
        ahead = self._ahead
        if ahead is not None and ahead.version == key and self._adapters.get(ahead.engine_model) is ahead:
            return  # loaded on an earlier poll and still there
        self._ahead = None
        routed = {route.version for route in (self._route, self._canary.route if self._canary else None) if route}
        if key in routed or key == self._ahead_failed:
            return
        try:
            base = await self._full_model_base(version)
            launched = self._engines.get(str(base.version)) if base is not None else None
            if base is not None and (launched is None or _exited(launched)):
                return
            self._ahead = await self._load(version, launched.engine if launched is not None else self.base_engine)
        except Exception as exc:  # never the live routes' failure: this poll's retirements still run
            self._ahead_failed = key
            ADAPTER_PRELOAD_FAILURES.inc()
            log.warning("could not load the %s version %s ahead of a move (%s: %s); the live versions are not "
                        "affected, a move to it will try again", CHALLENGER, key, type(exc).__name__, exc)
        else:
            self._ahead_failed = None

    def _retire_unrouted(self) -> None:
        """Mark loaded adapters that are neither champion, canary nor challenger for unloading; one routed to (or
        loaded ahead) again is kept."""
        routed = {self._route, self._canary.route if self._canary else None, self._ahead}
        for route in self._adapters.values():
            if route in routed:
                if self._retired.pop(route, None) is not None:
                    log.info("adapter %s (version %s) is routed to again: kept loaded", route.engine_model,
                             route.version)
            elif route not in self._retired:
                self._retired[route] = time.monotonic() + self.settings.swap_unload_grace_seconds
                self._unload_wanted.set()
                log.info("adapter %s (version %s) is no longer routed to: unloaded after its last request and "
                         "%g s", route.engine_model, route.version, self.settings.swap_unload_grace_seconds)
        in_use = {route.engine for route in routed if route is not None}
        for route in self._engines.values():
            if route.engine in in_use:
                if self._retired_engines.pop(route.engine, None) is not None:
                    log.info("the engine of version %s is routed to again: kept running", route.version)
            elif route.engine not in self._retired_engines:
                self._retired_engines[route.engine] = time.monotonic() + self.settings.swap_unload_grace_seconds
                self._unload_wanted.set()
                log.info("the engine of version %s is no longer routed to: stopped after its last request and %g s",
                         route.version, self.settings.swap_unload_grace_seconds)

    async def unload_retired(self) -> None:
        """Unload adapters that are no longer routed to, forever: each once no request holds it and the grace
        period has passed since it retired and since its last request ended.

        Sleeps until the next one is due, or until a route retires or a retired route's last request
        ends. A failed unload is logged, counted and tried again after ``swap_poll_seconds``; requests
        never see it (the adapter only stays loaded longer). Launched engines nothing routes to go the
        same way, stopped after the lock is let go: a process's stop may take seconds, and refreshes
        (an admin call among them) need not wait for it.
        """
        while True:
            self._unload_wanted.clear()  # before looking: a wish made while unloading is seen on the next turn
            async with self._lock:  # a refresh cannot route to an adapter while it is being unloaded
                wait, stopping = await self._unload_due()
            for engine, versions in stopping:
                await self._shut(engine)
                ENGINE_STOPS.inc()
                log.info("stopped the engine %s (versions %s) after its last request", engine.name, versions)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._unload_wanted.wait(), wait)

    async def _unload_due(self) -> tuple[float | None, list[tuple[Engine, str]]]:
        """Unload every retired adapter that is due; the seconds until the next falls due (None: none waits on time),
        and the retired engines that are due, forgotten here, for the caller to stop (with their versions)."""
        grace = self.settings.swap_unload_grace_seconds
        waits = []
        stopping: list[tuple[Engine, str]] = []
        for route, not_before in list(self._retired.items()):
            if route.in_flight or route.engine in self._retired_engines:
                continue  # the end of its last request wakes the unloader; an engine's stop takes its adapters
            due = max(not_before, route.idle_since + grace) - time.monotonic()
            if due > 0:
                waits.append(due)
                continue
            try:
                await self.engine.unload_adapter(route.engine_model)
            except Exception:
                ADAPTER_UNLOAD_FAILURES.inc()
                log.exception("could not unload adapter %s (version %s) from the engine; trying again in %g s",
                              route.engine_model, route.version, self.settings.swap_poll_seconds)
                self._retired[route] = time.monotonic() + self.settings.swap_poll_seconds
                waits.append(self.settings.swap_poll_seconds)
                continue
            del self._retired[route], self._adapters[route.engine_model]
            ADAPTER_UNLOADS.inc()
            ADAPTERS_LOADED.set(len(self._adapters))
            log.info("unloaded adapter %s (version %s) from the engine", route.engine_model, route.version)
        for engine, not_before in list(self._retired_engines.items()):
            routes = self._routes_on(engine)
            if any(route.in_flight for route in routes):
                continue
            due = max(not_before, max((r.idle_since for r in routes), default=0.0) + grace) - time.monotonic()
            if due > 0:
                waits.append(due)
                continue
            stopping.append((engine, ", ".join(sorted({route.version for route in routes}))))
            self._forget(engine)  # its adapters go with it
        return min(waits, default=None), stopping

    async def _forget_exited_engines(self) -> None:
        """Forget launched engines that exited on their own: one still routed to is launched again (its route
        stays until the new engine passes its health check; requests on it fail meanwhile, as they would)."""
        for route in [route for route in self._engines.values() if _exited(route)]:
            why = route.engine.launched.exited() if route.engine.launched is not None else None
            ENGINE_EXITS.inc()
            log.error("the engine of version %s exited: %s; launched again while it is routed to", route.version, why)
            self._forget(route.engine)
            await self._shut(route.engine)

    def _forget(self, engine: Engine) -> None:
        """Drop a launched engine, and the adapters loaded into it, from what this gateway routes to and stops."""
        self._retired_engines.pop(engine, None)
        self._engines = {key: route for key, route in self._engines.items() if route.engine is not engine}
        for name, route in list(self._adapters.items()):
            if route.engine is engine:
                del self._adapters[name]
                self._retired.pop(route, None)
        ADAPTERS_LOADED.set(len(self._adapters))
        ENGINES_LAUNCHED.set(len(self._engines))

    def _routes_on(self, engine: Engine) -> list[Route]:
        """The full model's own route and the adapters loaded into ``engine``."""
        return [route for route in (*self._engines.values(), *self._adapters.values()) if route.engine is engine]

    async def _shut(self, engine: Engine) -> None:
        try:
            if engine.launched is not None:
                await engine.launched.stop()
        except Exception:
            log.exception("could not stop the engine %s cleanly", engine.name)
        finally:
            await engine.client.close()

    async def close(self) -> None:
        """Stop every engine this gateway launched, and the launches under way (the gateway is stopping)."""
        for task in list(self._launches.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for route in list(self._engines.values()):
            await self._shut(route.engine)
        self._engines.clear()
        ENGINES_LAUNCHED.set(0)

    async def _canary_route(self, canary: Canary | None) -> CanaryRoute | None:
        if canary is None or canary.percent <= 0 or self._route is None or canary.version == self._route.version:
            return None
        current = self._canary
        if current is not None and current.route.version == canary.version and not _exited(current.route):
            route = current.route
        else:
            route = await self._load(await asyncio.to_thread(self.registry.version, canary.version))
            log.info("canary is now version %s at %g %%", canary.version, canary.percent)
        return CanaryRoute(route, canary.percent, canary.since)

    async def run(self) -> None:
        """Poll forever; a failed swap keeps the current route and is retried on the next poll."""
        while True:
            self._wake.clear()  # before reading: a launch ending meanwhile wakes the next wait at once
            try:
                await self.refresh()
            except Exception:
                SWAP_FAILURES.inc()
                log.exception("could not switch to the new champion; still serving %s", self._route)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.swap_poll_seconds)

    async def _load(self, version: ModelVersion, engine: Engine | None = None) -> Route:
        """Load a version into the engine (an adapter into ``engine`` if given, else the one serving its base); a
        failure is also recorded on the version in the registry."""
        try:
            route = await self._load_into_engine(version, engine)
        except EngineNotReady:
            raise
        except Exception as exc:
            where = f"gateway {self.settings.host}:{self.settings.port}"
            message = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, {where}: {type(exc).__name__}: {exc}"
            await asyncio.to_thread(self.registry.mark_load_error, version, message)
            raise
        await asyncio.to_thread(self.registry.mark_load_error, version, None)
        return route

    async def _load_into_engine(self, version: ModelVersion, engine: Engine | None) -> Route:
        if model_artifact_path(version) is not None:
            return self._full_model_route(version)
        if adapter_artifact_path(version) is None:
            return Route(str(version.version), self.settings.base_engine_model, self.base_engine)
        engine = engine or await self._engine_for_base(version)
        dest = self.adapter_dir / f"v{version.version}"
        path = await asyncio.to_thread(download_adapter, self.registry.client, version, dest)
        name = self.settings.version_engine_model(str(version.version))
        await engine.client.load_adapter(name, path)  # also puts back one unloaded behind this gateway's back
        route = self._adapters.setdefault(name, Route(str(version.version), name, engine))  # one coming back keeps
        ADAPTERS_LOADED.set(len(self._adapters))  # its count; one whose engine stopped left with it
        return route

    async def _engine_for_base(self, version: ModelVersion) -> Engine:
        """The engine an adapter loads into: the one serving its base (tag ``base_version``), started if need be."""
        base = await self._full_model_base(version)
        return self.base_engine if base is None else self._full_model_route(base).engine

    async def _full_model_base(self, version: ModelVersion) -> ModelVersion | None:
        """The full-model version an adapter was trained on (tag ``base_version``); None when the deployment's
        engine serves its base."""
        base = base_version(version)
        if base is None:
            return None
        base_model = await asyncio.to_thread(self.registry.version, base)
        return base_model if model_artifact_path(base_model) is not None else None

    def _full_model_route(self, version: ModelVersion) -> Route:
        """The route to a full-model version's own engine; EngineNotReady while it starts, which this begins.

        A failed launch is raised once (the caller counts, logs and records it on the version), then
        EngineNotReady until ``engine_launch_retry_seconds`` have passed and a new launch begins.
        """
        key = str(version.version)
        route = self._engines.get(key)
        if route is not None:
            return route
        failure = self._launch_failures.get(key)
        if failure is not None:
            if not failure.reported:
                failure.reported = True
                raise failure.error
            if time.monotonic() < failure.retry_at:
                raise EngineNotReady(f"the engine for version {key} failed to start ({failure.error}); next try in "
                                     f"{failure.retry_at - time.monotonic():.0f} s")
            del self._launch_failures[key]
        if key not in self._launches:
            self._launches[key] = asyncio.create_task(self._launch(version), name=f"engine-launch-v{key}")
        raise EngineNotReady(f"the engine for version {key} is starting")

    async def _launch(self, version: ModelVersion) -> None:
        """Start an engine for a full-model version and wait for its health check; then wake the watcher."""
        key = str(version.version)
        try:
            route = await self._start_engine(version)
        except Exception as exc:
            ENGINE_LAUNCH_FAILURES.inc()
            log.error("the engine for version %s did not start: %s; the live version keeps serving, next try in "
                      "%g s", key, exc, self.settings.engine_launch_retry_seconds)
            retry_at = time.monotonic() + self.settings.engine_launch_retry_seconds
            self._launch_failures[key] = _LaunchFailure(exc, retry_at)
        else:
            async with self._lock:  # not while a refresh or the unloader reads the engines
                self._engines[key] = route
            ENGINE_LAUNCHES.inc()
            ENGINES_LAUNCHED.set(len(self._engines))
            log.info("the engine for version %s passed its health check: routed to from the next read", key)
        finally:
            self._launches.pop(key, None)
            self._wake.set()

    async def _start_engine(self, version: ModelVersion) -> Route:
        if self.launcher is None:
            raise EngineLaunchError(f"version {version.version} is a full model, and this gateway launches no "
                                    "engines (FLYWHEEL_ENGINE_LAUNCHER=none)")
        key = str(version.version)
        model_dir = await asyncio.to_thread(download_model, self.registry.client, version, self.model_dir / f"v{key}")
        spec = EngineSpec(key, model_dir, self.settings.version_engine_model(key))
        log.info("starting an engine for version %s (full model in %s)", key, model_dir)
        launched = await self.launcher.launch(spec)
        engine = Engine(spec.served_name, EngineClient(launched.url, self.settings.engine_timeout), launched)
        try:
            await self._health_check(engine, spec)
        except BaseException:
            await self._shut(engine)
            raise
        return Route(key, spec.served_name, engine)

    async def _health_check(self, engine: Engine, spec: EngineSpec) -> None:
        """Wait until the engine answers its health check and serves ``spec``'s name (not some other server on
        its port); fail if it exits first or takes longer than ``engine_startup_timeout``."""
        deadline = time.monotonic() + self.settings.engine_startup_timeout
        while not await _serves(engine.client, spec.served_name):
            why = engine.launched.exited() if engine.launched is not None else None
            if why is not None:
                raise EngineLaunchError(f"the engine for version {spec.version} exited during start-up: {why}")
            if time.monotonic() >= deadline:
                raise EngineLaunchError(f"the engine for version {spec.version} did not pass its health check "
                                        f"within {self.settings.engine_startup_timeout:g} s")
            await asyncio.sleep(HEALTH_POLL_S)


def _exited(route: Route) -> bool:
    """Whether the route's engine is one the gateway launched that has exited."""
    return route.engine.launched is not None and route.engine.launched.exited() is not None


async def _serves(client: EngineClient, name: str) -> bool:
    if not await client.healthy():
        return False
    try:
        return name in await client.served_models()
    except Exception:  # up but not answering yet
        return False
