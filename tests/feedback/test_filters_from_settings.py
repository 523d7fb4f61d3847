"""Each filter takes its thresholds from ``FilterSettings`` by name (``from_settings``): a setting moved moves the
filter field of the same name and no other, so two same-typed thresholds cannot be swapped silently."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from feedback.filters import FilterSettings
from feedback.filters.bots import BotFilter
from feedback.filters.campaigns import CampaignFilter
from feedback.filters.consensus import ConsensusFilter
from feedback.filters.contract import ContractFilter, ContractSuite
from feedback.filters.integrity import IntegrityFilter
from feedback.filters.reliability import ReliabilityFilter
from feedback.filters.timing import TimingFilter
from feedback.filters.velocity import VelocityFilter

# filter class -> the prefix of its settings (setting ``{prefix}_{field}`` sets the filter's ``field``)
FILTERS: list[tuple[type[Any], str]] = [
    (BotFilter, "bot"), (CampaignFilter, "campaign"), (ConsensusFilter, "consensus"), (ContractFilter, "contract"),
    (ContractSuite, "contract"), (IntegrityFilter, "integrity"), (ReliabilityFilter, "reliability"),
    (TimingFilter, "timing"), (VelocityFilter, "velocity"),
]


def settings(**values: Any) -> FilterSettings:
    return FilterSettings(_env_file=None, **values)  # type: ignore[call-arg]


def thresholds(cls: type[Any], prefix: str) -> dict[str, str]:
    """filter field -> the setting that sets it."""
    names = FilterSettings.model_fields
    return {f.name: f"{prefix}_{f.name}" for f in dataclasses.fields(cls) if f"{prefix}_{f.name}" in names}


def moved(name: str) -> Any:
    """A valid value of setting ``name`` other than its default."""
    field = FilterSettings.model_fields[name]
    return field.default + 1 if field.annotation in (int, "int") else field.default * 0.99


def public(instance: Any) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance) if not f.name.startswith("_")}


def test_every_prefixed_setting_sets_a_filter_field() -> None:
    used = {setting for cls, prefix in FILTERS for setting in thresholds(cls, prefix).values()}
    prefixes = {prefix for _, prefix in FILTERS}
    assert {n for n in FilterSettings.model_fields if n.split("_")[0] in prefixes} == used


@pytest.mark.parametrize(("cls", "prefix"), FILTERS, ids=[cls.__name__ for cls, _ in FILTERS])
def test_a_setting_moves_its_own_field_only(cls: type[Any], prefix: str) -> None:
    base = public(cls.from_settings(settings()))
    for field, setting in thresholds(cls, prefix).items():
        value = moved(setting)
        changed = public(cls.from_settings(settings(**{setting: value})))
        assert {k for k in base if base[k] != changed[k]} == {field}, setting
        assert changed[field] == pytest.approx(value), setting


@pytest.mark.parametrize("cls", [TimingFilter, VelocityFilter])
def test_durations_follow_the_time_scale(cls: type[Any]) -> None:
    base = public(cls.from_settings(settings()))
    scaled = public(cls.from_settings(settings(time_scale=0.5, simulation=True)))
    durations = {k for k in base if k.endswith(("_s", "_ms", "ms_per_char"))}
    assert durations
    assert all(scaled[k] == pytest.approx(base[k] * 0.5) for k in durations)
    assert all(scaled[k] == base[k] for k in base if k not in durations)


def test_reward_scores_reach_the_filters_that_use_them() -> None:
    def scores() -> None:
        return None

    assert ReliabilityFilter.from_settings(settings(), reward_scores=scores).reward_scores is scores
    assert ConsensusFilter.from_settings(settings(), reward_scores=scores).reward_scores is scores
