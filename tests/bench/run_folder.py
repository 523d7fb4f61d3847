"""A ``measure_filters`` run folder, as the offline benches read it: its truth file and its database.

``measure_filters`` leaves one folder per scenario (and taste): ``truth.jsonl``, what each simulated user meant, and
``flywheel.db``, the worker's SQLite store. The benches that replay or score a run open both the same way.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from feedback.db.session import make_engine, session_factory


def check(parser: argparse.ArgumentParser, folders: Sequence[Path]) -> None:
    """Stop with a usage error at the first folder that is not a run folder."""
    for folder in folders:
        if not (folder / "truth.jsonl").is_file() or not (folder / "flywheel.db").is_file():
            parser.error(f"{folder} is not a measure_filters folder (truth.jsonl and flywheel.db)")


def sessions(folder: Path) -> sessionmaker[Session]:
    """Sessions on the run's database."""
    return session_factory(make_engine(f"sqlite:///{folder / 'flywheel.db'}"))
