"""Issue 3's targets on a small scenario through the real gateway, broker and worker (tiny model).

Honest users and fast bots, with waits at 1/20 of human time and the worker's time thresholds
scaled alike (``FilterSettings.time_scale``). Campaigns need a model that writes the campaign's
phrase, which the tiny random model never does; they are covered at the unit level
(``tests/feedback/test_filters_verdicts.py``) and measured on SmolLM2 by
``tests/bench/measure_filters.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from feedback.filters.settings import FilterSettings
from flywheel.cli.main import app as cli
from tests.e2e.conftest import Stack

TIME_SCALE = 0.05
SCENARIO = {
    "name": "e2e-targets",
    "seed": 7,
    "time_scale": TIME_SCALE,
    "concurrency": 4,
    "arrival_seconds": 20,
    "prompt_pool": 20,
    "chat": {"max_tokens": 12},
    "groups": [
        {"type": "honest", "count": 6, "events_per_user": 6},
        {"type": "fast_bot", "count": 2, "events_per_user": 16},
    ],
}


@pytest.fixture(scope="module")
def filter_settings() -> FilterSettings:
    """The production thresholds, their durations scaled as the users' waits are."""
    return FilterSettings(time_scale=TIME_SCALE, simulation=True)


def test_fast_bots_quarantined_and_honest_users_not(stack: Stack, tmp_path: Path) -> None:
    scenario, truth = tmp_path / "targets.yaml", tmp_path / "truth.jsonl"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    env = stack.env() | {"FLYWHEEL_KEY": stack.key}
    runner = CliRunner()
    sent = runner.invoke(cli, ["simulate", str(scenario), "--truth", str(truth), "--gateway", stack.gateway], env=env)
    assert sent.exit_code == 0, sent.output

    checked = runner.invoke(cli, ["feedback", "report", "--truth", str(truth), "--wait", "60", "--check"], env=env)
    assert checked.exit_code == 0, checked.output
