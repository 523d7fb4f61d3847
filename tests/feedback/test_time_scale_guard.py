"""``FLYWHEEL_FILTER_TIME_SCALE`` is a simulation knob: refused at start-up unless ``FLYWHEEL_SIMULATION=1``.

Left set in production, it would judge real voters at a fraction of human reading time, letting
bots through; the simulation launchers (``flywheel demo``) opt in explicitly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from feedback.filters import FilterSettings


def test_a_time_scale_from_the_environment_is_refused_outside_a_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_FILTER_TIME_SCALE", "0.01")
    monkeypatch.delenv("FLYWHEEL_SIMULATION", raising=False)
    with pytest.raises(ValidationError, match=r"for simulations only.*FLYWHEEL_SIMULATION=1"):
        FilterSettings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("FLYWHEEL_SIMULATION", "1")
    assert FilterSettings(_env_file=None).time_scale == 0.01  # type: ignore[call-arg]
    monkeypatch.delenv("FLYWHEEL_FILTER_TIME_SCALE")
    monkeypatch.delenv("FLYWHEEL_SIMULATION")
    assert FilterSettings(_env_file=None).time_scale == 1.0  # type: ignore[call-arg]


def test_the_worker_stops_at_start_up_with_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env |= {"FLYWHEEL_FILTER_TIME_SCALE": "0.05", "FLYWHEEL_DATA_DIR": str(tmp_path),
            "FLYWHEEL_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # never reached: refused before the broker
    done = subprocess.run([sys.executable, "-m", "flywheel", "worker", "--metrics-port", "0"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "FLYWHEEL_FILTER_TIME_SCALE=0.05 is for simulations only" in done.stderr
    assert "Traceback" not in done.stderr
