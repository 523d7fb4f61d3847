"""``flywheel train``'s options come from ``TrainConfig``: every field, its help, its default, its validation."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from flywheel.cli.main import app
from trainer.config import TrainConfig

runner = CliRunner()


def test_every_scalar_field_is_an_option_with_its_help_and_default() -> None:
    shown = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output
    for name, field in TrainConfig.model_fields.items():
        if name == "lora_target_modules":  # a tuple: set it in code, not on the command line
            continue
        assert f"--{name.replace('_', '-')}" in shown, name
        assert str(field.description)[:40] in shown, name
    assert "Default: 0.001." in shown  # learning_rate's default, from the field


def test_options_left_out_keep_the_configs_defaults_and_bad_values_name_the_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[TrainConfig] = []

    def fake_round(settings: Any, config: TrainConfig, *args: Any, **kwargs: Any) -> Any:
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr("trainer.round.train_once", fake_round)
    result = runner.invoke(app, ["train", "--learning-rate", "0.0002", "--no-reward-model", "--algorithm", "kto"])
    assert result.exit_code == 0, result.output
    assert seen[0] == TrainConfig(learning_rate=2e-4, reward_model=False, algorithm="kto")

    refused = runner.invoke(app, ["train", "--heldout-fraction", "1.5"])
    assert refused.exit_code == 1 and "--heldout-fraction" in refused.output and "less than 1" in refused.output
    refused = runner.invoke(app, ["train", "--loss-type", "robust"])
    assert refused.exit_code == 1 and "label_smoothing > 0" in refused.output
    assert len(seen) == 1


def test_demo_trains_every_round_with_the_given_options_and_its_own_seed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
) -> None:
    seen: list[tuple[Any, TrainConfig]] = []

    class FakeRun:  # stops before the stack starts: what reaches the run is what is under test
        def __init__(self, options: Any, plan: Any, out: Any, console: Any, config: TrainConfig, *rest: Any) -> None:
            seen.append((options, config))

        def run(self) -> Any:
            raise SystemExit(0)

    monkeypatch.setattr("flywheel.demo.runner.DemoRun", FakeRun)
    result = runner.invoke(app, ["demo", "--seed", "7", "--rpo-alpha", "1", "--model", str(tmp_path),
                                 "--out", str(tmp_path / "run"), "--vote-share", "0.5", "--ai-labels",
                                 "--constitution", "4"])
    assert result.exit_code == 0, result.output
    options, config = seen[0]
    assert config == TrainConfig(rpo_alpha=1.0, seed=7)
    assert options.training == {"rpo_alpha": 1.0}  # the report says how its rounds trained; the seed is its own
    assert (options.vote_share, options.ai_labels, options.constitution) == (0.5, True, 4)
    refused = runner.invoke(app, ["demo", "--rpo-alpha", "-1", "--model", str(tmp_path)])
    assert refused.exit_code != 0 and "--rpo-alpha" in refused.output


def test_the_demos_own_options_keep_their_help_names_and_limits() -> None:
    """Their typer.Option annotations survive the generated training options (they were once dropped)."""
    shown = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "400"}).output
    assert "Rounds of chat, votes, training and promotion." in shown and "--no-no-filters" not in shown
    refused = runner.invoke(app, ["demo", "--rounds", "0"])
    assert refused.exit_code == 2 and "--rounds" in refused.output
