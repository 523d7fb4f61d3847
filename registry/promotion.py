"""Which model version serves users: MLflow aliases, moved with an audit trail.

Promotion state is MLflow aliases (MLflow 3 deprecates stages): ``champion`` serves users,
``challenger`` is the latest candidate that passed the trainer's checks, ``canary`` is a version
a share of end users is sent to. MLflow keeps no alias history and an alias holds nothing but a
version, so every alias move also writes an ``AliasMove`` row in the store within the same call,
and the canary's percent lives on that row; rollback, the canary's state and "what served at
time T" read that table.

Moves are serialized across processes by a lock in the store (PostgreSQL's advisory lock,
SQLite's write lock) taken before the current alias is read, so two promotions, or a promotion
and a rollback, cannot both start from the same champion and leave a history that skips a
version. The alias move and its row commit together: the row waits in the transaction while
MLflow moves the alias; a registry failure rolls it back, a failed commit moves the alias back.

Torch-free and below both users: the trainer marks challengers, ops promote and roll back
from the CLI or the gateway's admin endpoints, and all of them go through this one class.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy import false, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import AdminAction, AliasMove
from feedback.db.session import write_ahead_log
from feedback.store import as_utc
from registry.live import HeadToHead, VersionLive, head_to_head, version_numbers
from registry.model_versions import (
    ADAPTER_TAG,
    CANARY,
    CHALLENGER,
    CHAMPION,
    LOAD_ERROR_TAG,
    MODEL_ARTIFACT_PATH,
    MODEL_SOURCE_TAG,
    MODEL_TAG,
    NO_ADAPTER,
)

log = logging.getLogger(__name__)

Chooser = Callable[[Session, ModelVersion | None], str]
"""Picks the version an alias moves to from its current holder, under the lock; raises RegistryError to refuse."""


CANARY_START = "canary"
"""The action of a move that starts a canary or changes its percent."""
CANARY_STOP = "canary_stop"
"""The action of a move that ends a canary: ``to_version`` names the version it ended, ``percent`` is 0."""
CANARY_ROLLBACK = "canary_rollback"
"""A canary ended because its users' feedback showed it worse than the champion (the move's ``evidence`` says how)."""
REGISTER_FULL_MODEL = "model_register"
"""The ``admin_actions`` action of a full-model version registered by ops; ``target`` is ``<model>:v<N>``."""


class RegistryError(RuntimeError):
    """A registry operation that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class Canary:
    """The running canary: its version, the percent of end users sent to it, and since when it runs.

    ``since`` is when this version became the canary; a change of its percent keeps it, so the
    canary's evidence and its maximum duration count from its start.
    """

    version: str
    percent: float
    since: datetime


@dataclass(frozen=True)
class ServingAt:
    """Which versions answered at a moment, as the audit trail of alias moves tells it."""

    at: datetime
    champion: str | None
    canary: str | None
    canary_percent: float | None
    champion_since: datetime | None
    canary_since: datetime | None


@dataclass(frozen=True)
class _Planned:
    """One alias move waiting in a transaction: its audit row, and where the alias goes (None: removed)."""

    alias: str
    previous: ModelVersion | None
    version: str | None
    row: AliasMove


@dataclass(frozen=True)
class VersionInfo:
    """A version with its aliases, lineage tags and its run's metrics; ``live``: how it does with real users."""

    version: str
    aliases: list[str]
    tags: dict[str, str]
    metrics: dict[str, float]
    run_id: str | None
    created_at: datetime
    live: VersionLive | None = None
    against_champion: HeadToHead | None = None


class Promotion:
    """The aliases of one registered model and their audit trail."""

    def __init__(self, tracking_uri: str, name: str, factory: sessionmaker[Session]) -> None:
        # MLflow leaves SQLite in rollback-journal mode, where the gateways polling the aliases, the
        # trainer registering and ops moving an alias all queue on one lock: concurrent moves hit
        # "database is locked" on a slow machine. Moves stay serialized by ``_locked``.
        write_ahead_log(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.name = name
        self.factory = factory

    def version(self, version: str) -> ModelVersion:
        try:
            return self.client.get_model_version(self.name, version)
        except MlflowException as exc:
            raise RegistryError(f"{self.name!r} has no version {version!r}") from exc

    def mark_load_error(self, version: ModelVersion, error: str | None) -> None:
        """Record on the version (tag ``load_error``) that a gateway could not load it, or clear it once one did.

        So ``flywheel models list`` and ``/admin/models`` show a version that is routed to but not served.
        The first failure is kept (retries every poll do not rewrite it). Best effort: a registry failure
        here is logged, the gateway's own state does not depend on it.
        """
        recorded = LOAD_ERROR_TAG in (version.tags or {})
        try:
            if error is not None and not recorded:
                self.client.set_model_version_tag(self.name, str(version.version), LOAD_ERROR_TAG, error[:4000])
            elif error is None and recorded:
                self.client.delete_model_version_tag(self.name, str(version.version), LOAD_ERROR_TAG)
        except MlflowException:
            log.exception("could not record the load error of version %s in the registry", version.version)

    def register_full_model(self, experiment_id: str, model_dir: Path, actor: str, reason: str | None = None) -> str:
        """Register an HF model folder as a new full-model version (moves no alias); returns its version.

        The folder is copied into a run of ``experiment_id`` (artifact ``model``), so the version
        stays servable after the folder changes or goes, and every gateway can download it. The
        registration is audited in ``admin_actions`` like quarantine reviews: ops bring such versions
        in by hand, unlike trained ones, whose run says where they came from.
        """
        if not (model_dir / "config.json").is_file():
            raise RegistryError(f"{model_dir} is not an HF model folder: it has no config.json")
        if self.alias_version(CHAMPION) is None:
            raise self._no_champion()
        run_id = self.client.create_run(experiment_id, run_name=f"full-model-{model_dir.name}").info.run_id
        try:
            self.client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_PATH)
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        self.client.set_terminated(run_id)
        source = f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
        tags = {ADAPTER_TAG: NO_ADAPTER, MODEL_TAG: MODEL_ARTIFACT_PATH, MODEL_SOURCE_TAG: str(model_dir)}
        version = str(self.client.create_model_version(self.name, source, run_id=run_id, tags=tags).version)
        try:
            with self.factory() as session:
                session.add(AdminAction(actor=actor, action=REGISTER_FULL_MODEL, target=f"{self.name}:v{version}",
                                        detail={"source": str(model_dir), "run_id": run_id, "reason": reason}))
                session.commit()
        except BaseException:  # unaudited, it would not exist: take the version back
            self.client.delete_model_version(self.name, version)
            raise
        return version

    def alias_version(self, alias: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException:
            return None

    def champion(self) -> ModelVersion:
        champion = self.alias_version(CHAMPION)
        if champion is None:
            raise self._no_champion()
        return champion

    def _no_champion(self) -> RegistryError:
        return RegistryError(f"{self.name!r} has no champion yet: start the gateway once (flywheel serve) first")

    def set_challenger(self, version: str, actor: str = "trainer", reason: str | None = None) -> None:
        self._move(CHALLENGER, version, action="challenger", actor=actor, reason=reason)

    def promote(self, version: str, actor: str, reason: str | None = None) -> None:
        """Make ``version`` the champion (what users are served); a canary of that version ends with it."""
        self.version(version)  # a clear MLflow error for an unknown version, before any write

        def unless_champion(_session: Session, champion: ModelVersion | None) -> str:
            if champion is not None and str(champion.version) == str(version):
                raise RegistryError(f"version {version} is already the champion")
            return str(version)

        self._move_champion(unless_champion, action="promote", actor=actor, reason=reason)

    def rollback(self, actor: str, reason: str | None = None) -> str:
        """Return the champion to the version it replaced; returns that version.

        The audit trail is read like a stack: the newest promotion *to* the current champion
        names the version it replaced. Rollback rows are skipped, so rolling back twice walks
        two steps back instead of undoing the first rollback.
        """
        return self._move_champion(self._replaced, action="rollback", actor=actor, reason=reason)

    def _move_champion(self, target: Chooser, action: str, actor: str, reason: str | None) -> str:
        """Move the champion alias; a canary of the version that becomes champion ends in the same commit.

        A version cannot be champion and canary at once: the canary's share of users would be
        sent to the champion under another name, and its live comparison would compare it with itself.
        """
        with self._locked() as session:
            previous = self.alias_version(CHAMPION)
            version = target(session, previous)
            moves = [self._plan(CHAMPION, previous, version, action, actor, reason)]
            canary = self.alias_version(CANARY)
            if canary is not None and str(canary.version) == version:
                moves.append(self._plan(CANARY, canary, None, CANARY_STOP, actor,
                                        f"version {version} became champion ({action})", percent=0.0))
            self._apply(session, moves)
        return version

    def start_canary(self, version: str, percent: float, actor: str, reason: str | None = None,
                     evidence: dict[str, Any] | None = None) -> Canary:
        """Send ``percent`` % of end users (sticky per user) to ``version``, or change the running canary's percent.

        Refused (RegistryError) for the champion itself, for a percent outside (0, 100], and for the
        canary it already is at that percent. Another version's canary is replaced (one canary at a time).
        """
        if not 0 < percent <= 100:
            raise RegistryError(f"a canary's percent must be above 0 and at most 100, not {percent}")
        self.version(version)

        with self._locked() as session:
            champion = self.alias_version(CHAMPION)
            if champion is None:
                raise self._no_champion()
            if str(champion.version) == str(version):
                raise RegistryError(f"version {version} is the champion; a canary must be another version")
            previous = self.alias_version(CANARY)
            if previous is not None and str(previous.version) == str(version):
                running = self._canary_state(session, str(version))
                if running is not None and running.percent == percent:
                    raise RegistryError(f"version {version} is already the canary at {percent:g} %")
            self._apply(session, [self._plan(CANARY, previous, str(version), CANARY_START, actor, reason,
                                             percent=float(percent), evidence=evidence)])
            started = self._canary_state(session, str(version))
        if started is None:
            raise RegistryError(f"the canary move of version {version} is missing from the audit trail")
        return started

    def stop_canary(self, actor: str, reason: str | None = None, evidence: dict[str, Any] | None = None) -> str:
        """End the running canary (every user back to the champion); returns the version it ended."""
        with self._locked() as session:
            previous = self.alias_version(CANARY)
            if previous is None:
                raise RegistryError(f"{self.name!r} has no canary running")
            version = str(previous.version)
            self._apply(session, [self._plan(CANARY, previous, None, CANARY_STOP, actor, reason, percent=0.0,
                                             evidence=evidence)])
        return version

    def conclude_canary(self, canary: Canary, outcome: str, actor: str, reason: str,
                        evidence: dict[str, Any]) -> None:
        """Apply an automatic decision about ``canary``: ``rollback`` or ``stop`` ends it, ``promote`` makes it
        champion (which ends it too); every move carries the decision's ``evidence``.

        Decided from evidence read before the lock, so under the lock the canary must still be the one
        judged (same version, same start): otherwise the decision is about a canary that no longer
        runs (ops moved it, or another gateway already decided) and RegistryError refuses it.
        """
        with self._locked() as session:
            current = self.alias_version(CANARY)
            running = self._canary_state(session, str(current.version)) if current is not None else None
            if current is None or running is None or (running.version, running.since) != (canary.version,
                                                                                         canary.since):
                raise RegistryError(f"the canary of version {canary.version} since {canary.since:%H:%M:%S} no "
                                    "longer runs; nothing decided")
            moves = []
            if outcome == "promote":
                champion = self.alias_version(CHAMPION)
                moves.append(self._plan(CHAMPION, champion, canary.version, "promote", actor, reason,
                                        evidence=evidence))
            elif outcome not in ("rollback", "stop"):
                raise ValueError(f"a canary decision is rollback, stop or promote, not {outcome!r}")
            moves.append(self._plan(CANARY, current, None, CANARY_ROLLBACK if outcome == "rollback" else CANARY_STOP,
                                    actor, reason, percent=0.0, evidence=evidence))
            self._apply(session, moves)

    def canary(self) -> Canary | None:
        """The running canary, or None. Its version is the MLflow alias; its percent, the audited move that set it.

        An alias someone set in MLflow by hand, with no move of ours for that version, is a canary at
        0 %: no user is sent to a version nobody chose a share for.
        """
        version = self.alias_version(CANARY)
        if version is None:
            return None
        with self.factory() as session:
            state = self._canary_state(session, str(version.version))
        if state is None:
            log.warning("%s@%s names version %s, but no audited canary move set it: it gets no traffic",
                        self.name, CANARY, version.version)
            return Canary(str(version.version), 0.0, datetime.fromtimestamp(0, tz=UTC))
        return state

    def _canary_state(self, session: Session, version: str, at: datetime | None = None) -> Canary | None:
        """The percent and start of ``version``'s canary from its moves (up to ``at``), or None if none set it."""
        query = select(AliasMove).where(AliasMove.model_name == self.name, AliasMove.alias == CANARY)
        if at is not None:
            query = query.where(AliasMove.at <= at)
        moves = session.scalars(query.order_by(AliasMove.at.desc(), AliasMove.id.desc()).limit(1000)).all()
        run = []
        for move in moves:  # newest first: the moves of this version's current canary, until another began
            if move.action != CANARY_START or move.to_version != version:
                break
            run.append(move)
        if not run:
            return None
        return Canary(version, float(run[0].percent or 0.0), as_utc(run[-1].at))

    def serving_at(self, at: datetime) -> ServingAt:
        """Which version was champion, and which canary at what percent, at ``at`` (from the audit trail).

        Moves made in MLflow by hand are not in the trail; a gateway follows a move within its
        poll interval (FLYWHEEL_SWAP_POLL_SECONDS), so answers within that interval of a move may
        still have come from the version before it (every completion records the version that answered).
        """
        at = as_utc(at).astimezone(UTC)  # SQLite compares the stored UTC wall-clock text
        with self.factory() as session:
            champion = self._last_move(session, CHAMPION, at)
            last_canary = self._last_move(session, CANARY, at)
            canary = (self._canary_state(session, last_canary.to_version, at)
                      if last_canary is not None and last_canary.action == CANARY_START else None)
        live = canary is not None and canary.percent > 0
        return ServingAt(
            at=at,
            champion=champion.to_version if champion is not None else None,
            canary=canary.version if live and canary else None,
            canary_percent=canary.percent if live and canary else None,
            champion_since=as_utc(champion.at) if champion is not None else None,
            canary_since=canary.since if live and canary else None,
        )

    def _last_move(self, session: Session, alias: str, at: datetime) -> AliasMove | None:
        return session.scalars(
            select(AliasMove)
            .where(AliasMove.model_name == self.name, AliasMove.alias == alias, AliasMove.at <= at)
            .order_by(AliasMove.at.desc(), AliasMove.id.desc())
            .limit(1)
        ).first()

    def _replaced(self, session: Session, champion: ModelVersion | None) -> str:
        """The version the current champion replaced (rollback's target), read under the lock."""
        if champion is None:
            raise self._no_champion()
        current = str(champion.version)
        move = session.scalars(
            select(AliasMove)
            .where(
                AliasMove.model_name == self.name,
                AliasMove.alias == CHAMPION,
                AliasMove.to_version == current,
                AliasMove.action != "rollback",
            )
            .order_by(AliasMove.at.desc(), AliasMove.id.desc())
            .limit(1)
        ).first()
        if move is None or move.from_version is None:
            raise RegistryError(
                f"nothing to roll back to: version {current} of {self.name!r} has been champion since "
                f"{'the bootstrap' if move is not None else 'before the audit trail began'}"
            )
        return move.from_version

    def history(self, limit: int | None = None) -> list[AliasMove]:
        """Alias moves of this model, newest first."""
        with self.factory() as session:
            query = (
                select(AliasMove)
                .where(AliasMove.model_name == self.name)
                .order_by(AliasMove.at.desc(), AliasMove.id.desc())
            )
            return list(session.scalars(query.limit(limit) if limit else query))

    def live_versions(self) -> list[VersionInfo]:
        """``list_versions`` with each version's live numbers and its picks against the current champion."""
        infos = self.list_versions()
        champion = next((i.version for i in infos if CHAMPION in i.aliases), None)
        with self.factory() as session:
            numbers, meetings = version_numbers(session), head_to_head(session)
        return [
            replace(info, live=numbers.get(info.version),
                    against_champion=meetings.get((info.version, champion)) if champion else None)
            for info in infos
        ]

    def list_versions(self) -> list[VersionInfo]:
        """Every version, oldest first, with its aliases, tags and its run's metrics."""
        try:
            aliases_by_version: dict[str, list[str]] = {}
            for alias, version in self.client.get_registered_model(self.name).aliases.items():
                aliases_by_version.setdefault(str(version), []).append(alias)
        except MlflowException:
            return []
        infos = []
        for v in self.client.search_model_versions(f"name='{self.name}'"):
            metrics: dict[str, Any] = self.client.get_run(v.run_id).data.metrics if v.run_id else {}
            infos.append(
                VersionInfo(
                    version=str(v.version),
                    aliases=sorted(aliases_by_version.get(str(v.version), [])),
                    tags=dict(v.tags),
                    metrics=dict(metrics),
                    run_id=v.run_id,
                    created_at=datetime.fromtimestamp(v.creation_timestamp / 1000, tz=UTC),
                )
            )
        return sorted(infos, key=lambda i: int(i.version))

    def _move(self, alias: str, target: str | Chooser, action: str, actor: str, reason: str | None) -> str:
        """Move an alias and write its audit row together, one move at a time; returns the version moved to.

        Under the lock: read the alias, choose the ``target`` (a version, or a function of the current
        holder), then ``_apply`` the move.
        """
        with self._locked() as session:
            previous = self.alias_version(alias)
            version = target if isinstance(target, str) else target(session, previous)
            self._apply(session, [self._plan(alias, previous, version, action, actor, reason)])
        return version

    def _plan(self, alias: str, previous: ModelVersion | None, version: str | None, action: str, actor: str,
              reason: str | None, percent: float | None = None, evidence: dict[str, Any] | None = None) -> _Planned:
        """A move of ``alias`` to ``version``; None removes the alias, and the row names the version it held."""
        to_version = version if version is not None else str(previous.version) if previous is not None else ""
        row = AliasMove(model_name=self.name, alias=alias, action=action,
                        from_version=str(previous.version) if previous is not None else None,
                        to_version=to_version, actor=actor, reason=reason, percent=percent, evidence=evidence)
        return _Planned(alias, previous, version, row)

    def _apply(self, session: Session, moves: list[_Planned]) -> None:
        """Write the moves' rows and move their aliases as one: all of them happen or none (under the lock).

        The rows are flushed first, so a store error stops the moves before MLflow sees any; a registry
        error rolls the rows back and puts back the aliases already moved; a commit that fails after
        MLflow moved the aliases moves them all back.
        """
        session.add_all([move.row for move in moves])
        session.flush()
        done: list[_Planned] = []
        try:
            for move in moves:
                if move.version is None:
                    self.client.delete_registered_model_alias(self.name, move.alias)
                else:
                    self.client.set_registered_model_alias(self.name, move.alias, move.version)
                done.append(move)
            session.commit()
        except BaseException:
            for move in reversed(done):
                self._put_back(move.alias, move.previous)
            raise

    def _put_back(self, alias: str, previous: ModelVersion | None) -> None:
        """Undo an alias move whose audit row could not be committed (still under the lock)."""
        try:
            if previous is None:
                self.client.delete_registered_model_alias(self.name, alias)
            else:
                self.client.set_registered_model_alias(self.name, alias, str(previous.version))
        except MlflowException:
            log.exception("could not move %s@%s back to %s after its audit row failed: the alias and its history "
                          "disagree", self.name, alias, previous.version if previous is not None else "nothing")

    @contextmanager
    def _locked(self) -> Iterator[Session]:
        """A session holding this model's alias lock until it commits or closes (closing rolls back).

        PostgreSQL: a transaction-level advisory lock keyed by the model name. SQLite has one writer
        at a time: a write that touches no row still takes the database's write lock, and the
        connection's busy timeout makes a second mover wait for it.
        """
        with self.factory() as session:
            if session.get_bind().dialect.name == "postgresql":
                session.execute(select(func.pg_advisory_xact_lock(self._lock_key)))
            else:
                session.execute(update(AliasMove).where(false()).values(reason=None))
            yield session

    @property
    def _lock_key(self) -> int:
        """A signed 64-bit advisory-lock key (PostgreSQL's bigint), one per registered model."""
        digest = hashlib.sha256(f"flywheel.promotion:{self.name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)
