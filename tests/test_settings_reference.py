"""docs/configuration.md is generated from the settings classes and must match them; every setting says what it does."""

from __future__ import annotations

from pathlib import Path

from flywheel.settings_reference import SECTIONS, render
from trainer.config import TrainConfig

DOC = Path(__file__).parents[1] / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_settings_generate() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `.venv/bin/python -m flywheel.settings_reference > docs/configuration.md`")


def test_every_setting_carries_its_description() -> None:
    for _, model, _ in SECTIONS:
        assert not [name for name, field in model.model_fields.items() if not field.description], model.__name__
    assert not [name for name, field in TrainConfig.model_fields.items() if not field.description]
