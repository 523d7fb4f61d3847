"""Scheduling: durations, and the trainer lock that never lets two runs overlap nor outlives a killed one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.trainer.conftest import Store, response_id
from trainer.config import ConfigError, TrainerSettings
from trainer.registry import Registry
from trainer.schedule import LockBusy, new_feedback_count, parse_duration, training_lock


def test_durations() -> None:
    assert [parse_duration(d) for d in ("30m", "6h", "1d", "1h30m", "45s")] == [1800, 21600, 86400, 5400, 45]
    for bad in ("", "10", "5 minutes", "0m", "1w"):
        with pytest.raises(ConfigError, match="--every"):
            parse_duration(bad)


def hold_lock_in_child(settings: TrainerSettings, ready: Path) -> subprocess.Popen[bytes]:
    """A separate process that takes the lock and sleeps holding it, as a long training run would."""
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from trainer.config import TrainerSettings
        from trainer.schedule import training_lock
        settings = TrainerSettings(_env_file=None, data_dir={str(settings.data_dir)!r},
                                   database_url={settings.resolved_database_url!r},
                                   registered_model={settings.registered_model!r})
        with training_lock(settings):
            Path({str(ready)!r}).touch()
            time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the child never took the lock"
        time.sleep(0.1)
    return child


def check_lock(settings: TrainerSettings, tmp_path: Path) -> None:
    child = hold_lock_in_child(settings, tmp_path / "ready")
    try:
        with pytest.raises(LockBusy), training_lock(settings):
            pytest.fail("a second run got the lock while the first held it")
    finally:
        os.kill(child.pid, signal.SIGKILL)  # a crash: no cleanup code runs
        child.wait()
    # The OS (or PostgreSQL) released it with the dead process, and it still excludes a second holder.
    with training_lock(settings), pytest.raises(LockBusy), training_lock(settings):
        pass


def lock_settings(tmp_path: Path, database_url: str) -> TrainerSettings:
    return TrainerSettings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        database_url=database_url,
        registered_model=f"lock-test-{tmp_path.name}",
    )


def test_file_lock_excludes_a_second_run_and_dies_with_its_holder(tmp_path: Path) -> None:
    check_lock(lock_settings(tmp_path, f"sqlite:///{tmp_path / 'flywheel.db'}"), tmp_path)


def test_postgres_advisory_lock_excludes_a_second_run_and_dies_with_its_holder(
    postgres_admin: object, tmp_path: Path
) -> None:
    from tests.conftest import POSTGRES_URL

    check_lock(lock_settings(tmp_path, POSTGRES_URL), tmp_path)


def test_only_end_users_feedback_counts_as_new(
    settings: TrainerSettings, factory: sessionmaker[Session], store: Store
) -> None:
    """A batch of AI labels or constitutional pairs never starts a scheduled round by itself."""
    registry = Registry(settings, factory)
    store.thumbs(store.completion(response_id(), "q", "a"), "up")
    store.thumbs(store.completion(response_id(), "q", "a"), "down", weight=0.0)  # quarantined
    assert new_feedback_count(factory, registry) == 1
    for source in ("ai", "constitution"):
        store.feedback("pairwise", pair_id="pair_x", choice="a", source=source)
    assert new_feedback_count(factory, registry) == 1
