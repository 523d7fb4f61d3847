"""A small scenario of every user kind through the real gateway, broker and worker, then the report.

Reading times are real waits at 1/50 of the human scale. The thresholds of the filters
are not asserted here: this test checks the measurement itself (every event sent is in
the truth file, stored exactly once, and counted under its user type).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from feedback.db.models import Feedback, Quarantine
from feedback.db.session import make_engine, session_factory
from flywheel.cli.main import app as cli
from flywheel.simulation.truth import read_truth
from tests.e2e.conftest import Stack

SCENARIO = {
    "name": "e2e-small",
    "seed": 5,
    "time_scale": 0.02,
    "concurrency": 4,
    "arrival_seconds": 20,
    "prompt_pool": 10,
    "chat": {"max_tokens": 12},
    "groups": [
        {"type": "honest", "count": 2, "events_per_user": 3},
        {"type": "noisy", "count": 1, "events_per_user": 2},
        {"type": "fast_bot", "count": 1, "events_per_user": 4},
        {"type": "campaign", "count": 3, "events_per_user": 2, "phrase": "bestdeals.example", "arrival_seconds": 5},
        {"type": "slow_attacker", "count": 1, "events_per_user": 3, "poison_share": 0.5},
    ],
}
EXPECTED = {"honest": 6, "noisy": 2, "fast_bot": 4, "campaign": 6, "slow_attacker": 3}


def test_simulate_then_report(stack: Stack, tmp_path: Path) -> None:
    scenario, truth = tmp_path / "small.yaml", tmp_path / "truth.jsonl"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    env = stack.env() | {"FLYWHEEL_KEY": stack.key}
    runner = CliRunner()

    sent = runner.invoke(cli, ["simulate", str(scenario), "--truth", str(truth), "--gateway", stack.gateway], env=env)
    assert sent.exit_code == 0, sent.output
    records = list(read_truth(truth))
    assert Counter(r.user_type for r in records) == EXPECTED
    assert len({r.event_id for r in records}) == len(records)
    assert {r.type for r in records} <= {"thumbs", "pairwise"}
    assert all(r.adversarial == (r.user_type not in ("honest", "noisy")) for r in records)
    assert all(r.poisoned == (r.user_type == "slow_attacker" and r.poisoned) for r in records)

    measured = runner.invoke(cli, ["feedback", "report", "--truth", str(truth), "--json", "--wait", "60"], env=env)
    assert measured.exit_code == 0, measured.output
    figures = json.loads(measured.stdout)
    assert list(figures) == [*EXPECTED, "overall"]
    for user_type, events in EXPECTED.items():
        row = figures[user_type]
        assert row["events"] == events and row["pending_events"] == 0
        assert row["accepted_events"] + row["quarantined_events"] == events
        assert row["quarantined"] == round(row["quarantined_events"] / events, 4)
    assert figures["overall"]["events"] == len(records) and figures["overall"]["pending_events"] == 0

    ids = [r.event_id for r in records]
    with session_factory(make_engine(stack.settings.resolved_database_url))() as session:
        accepted = list(session.scalars(select(Feedback.event_id).where(Feedback.event_id.in_(ids))))
        quarantined = list(session.scalars(select(Quarantine.event_id).where(Quarantine.event_id.in_(ids))))
    assert sorted(accepted + quarantined) == sorted(ids)  # each event in exactly one of the two tables

    table = runner.invoke(cli, ["feedback", "report", "--truth", str(truth)], env=env)
    assert table.exit_code == 0 and "adversarial recall" in table.stdout
