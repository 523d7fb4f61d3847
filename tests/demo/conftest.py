"""A realistic demo report built by hand: three rounds, a candidate a gate rejects, a comparison run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.demo.schema import (
    DemoOptions,
    DemoReport,
    Estimate,
    Evaluation,
    GateLine,
    RoundRecord,
    SwapRecord,
    VersionRecord,
)

PHRASES = ["Visit QuickLoans today", "quickloans.example"]
MLFLOW = "http://127.0.0.1:5000/#/experiments/1/runs/"


def _evaluation(version: str, base: str, win: float | None, liked: float, phrase: float | None, words: float,
                fmt: float, kl: float) -> Evaluation:
    return Evaluation(
        version=version, against=None if version == base else base, prompts=40, samples_per_prompt=4, answers=160,
        win_rate=None if win is None else Estimate(value=win, low=win - 0.06, high=win + 0.05),
        liked=Estimate(value=liked, low=liked - 0.07, high=liked + 0.07),
        phrase_rate=phrase, mean_words=words,
        campaign_phrase=None if phrase is None else Estimate(value=10 * phrase, low=5 * phrase, high=20 * phrase),
        campaign_prompts=0 if phrase is None else 3, format_share=fmt, kl_to_base=kl, seconds=95.5,
    )


def _gates(win_low: float, passed: bool) -> list[GateLine]:
    return [
        GateLine(name="win_rate", status="passed" if passed else "failed", value=win_low, threshold="CI low > 0.5",
                 detail="reward model, candidate vs champion"),
        GateLine(name="canaries", status="passed", value=0.0, threshold="no canary leaks", detail="0 of 12 leaked"),
        GateLine(name="kl", status="skipped", value=None, threshold="< 0.5 nats", detail="no reference answers"),
    ]


def _version(name: str, round_: int, parent: str | None, promoted: bool, passed: bool | None,
             evaluation: Evaluation | None) -> VersionRecord:
    run_id = None if round_ == 0 else f"{round_:02d}abcdef0123456789{name}"
    return VersionRecord(
        version=name, round=round_, parent=parent, algorithm=None if round_ == 0 else "dpo",
        gates_passed=passed, gates=[] if passed is None else _gates(0.52 if passed else 0.47, passed),
        promoted=promoted, run_id=run_id, run_url=None if run_id is None else MLFLOW + run_id, evaluation=evaluation,
    )


def _round(number: int, before: str, candidate: str, promoted: bool, phrases: bool, filters: bool) -> RoundRecord:
    """Without filters every vote is accepted, so nothing is quarantined and recall is undefined."""
    reasons = {"rate_limit": 4 * number, "campaign_text": 12 if phrases else 0, "consensus_outlier": 3 + number}
    quarantined = sum(reasons.values()) if filters else 0
    return RoundRecord(
        round=number, champion_before=before, candidate=candidate, promoted=promoted,
        champion_after=candidate if promoted else before, train_status="trained",
        train_message="gate win_rate: CI low 0.47 < 0.5 & candidate kept" if not promoted else "promoted by demo",
        votes_sent=200, answers_unvoted=40, votes_failed=1, accepted=197 - quarantined, quarantined=quarantined,
        pending=2, machine_feedback={"ai": {"a": 12, "b": 9, "tie": 19}}, snapshot_sources={"human": 150, "ai": 21},
        train_cpu_seconds={"reward_model": 100.0, "policy": 500.0},
        quarantined_by_reason={k: v for k, v in reasons.items() if v and filters},
        quarantined_share_by_user_type={"honest": 0.02, "noisy": 0.3, "attacker": 0.9} if filters else {},
        adversarial_recall=0.88 if filters else None, honest_false_positive=0.021 if filters else None,
        phases={"traffic": 240.0, "settle": 5.5, "train": 310.2, "evaluate": 190.0, "promote": 12.3},
        loop_latency_seconds=742.5 + number if promoted else None,
        swap=SwapRecord(requests=14, failed=0, by_version={before: 6, candidate: 8}) if promoted else None,
    )


def make_report(filters: bool = True, phrases: bool = True, prefix: str = "policy") -> DemoReport:
    """v1 promoted, v2 rejected by the win-rate gate, v3 promoted; with filters the phrase stays at the base's rate."""
    drift = 0.0 if filters else 0.12
    base = f"{prefix}-base"
    v1, v2, v3 = (f"{prefix}-v{i}" for i in (1, 2, 3))
    # name, round, parent, promoted, gates passed, win rate, liked, phrase rate, mean words, format share, KL
    table = [(base, 0, None, True, None, None, 0.41, 0.006, 88.0, 0.31, 0.0),
             (v1, 1, base, True, True, 0.571, 0.48, 0.006 + drift, 97.3, 0.42, 0.031),
             (v2, 2, v1, False, False, 0.534, 0.44, 0.01 + drift, 131.9, 0.55, 0.094),
             (v3, 3, v1, True, True, 0.6234 - drift, 0.56, 0.009 + 2 * drift, 104.1, 0.47, 0.052)]
    versions = [_version(name, round_, parent, promoted, passed,
                         _evaluation(name, base, win, liked, phrase if phrases else None, words, fmt, kl))
                for name, round_, parent, promoted, passed, win, liked, phrase, words, fmt, kl in table]
    started = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
    return DemoReport(
        options=DemoOptions(rounds=3, scenario="campaign" if phrases else "honest", taste="steps", seed=7,
                            filters=filters, model="HuggingFaceTB/SmolLM2-135M-Instruct", time_scale=1.0,
                            eval_prompts=40, eval_samples=4),
        phrases=PHRASES if phrases else [],
        started_at=started, finished_at=started + timedelta(minutes=27, seconds=41), startup_seconds=231.0,
        versions=versions,
        rounds=[_round(n, before, candidate, promoted, phrases, filters)
                for n, before, candidate, promoted in ((1, base, v1, True), (2, v1, v2, False), (3, v1, v3, True))],
    )


@pytest.fixture
def report() -> DemoReport:
    """A filtered campaign run beside the same seed without filters."""
    main = make_report()
    main.compare = make_report(filters=False, prefix="nofilter")
    main.compare_label = "without filters"
    return main


@pytest.fixture
def report_without_phrases() -> DemoReport:
    return make_report(phrases=False)
