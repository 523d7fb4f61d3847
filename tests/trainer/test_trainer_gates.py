"""The gates on answers whose behaviour is known: a verbose or list-happy candidate fails, canaries, the CI."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tests.trainer.test_trainer_loop import SHORT, VERBOSE, fast_config
from trainer.config import TrainerSettings
from trainer.gates import (
    Answers,
    Canary,
    GateInputs,
    VoteEvidence,
    bootstrap_ci,
    evaluate,
    has_markup,
    load_canaries,
    word_count,
)
from trainer.pairs import PreferencePair
from trainer.policy import PairMetrics

PROMPTS = [[{"role": "user", "content": f"question {i}"}] for i in range(8)]
CANARIES = [Canary("capital", "What is the capital of France?", ("Paris",), 200)]


def answers(text: str, tokens: int) -> Answers:
    return Answers([[1] * tokens for _ in PROMPTS], [text for _ in PROMPTS])


def inputs(candidate: Answers, canary_answer: str = "Paris.") -> GateInputs:
    metrics = PairMetrics(accuracy=0.8, mean_margin=1.0, pairs=10)
    return GateInputs(
        prompts=PROMPTS,
        champion=answers(SHORT, 4),
        candidate=candidate,
        canaries=CANARIES,
        champion_canaries=Answers([[1]], ["It is Paris."]),
        candidate_canaries=Answers([[1]], [canary_answer]),
        kl=0.01,
        kl_base=0.05,
        champion_metrics=metrics,
        candidate_metrics=metrics,
    )


def test_a_verbose_candidate_fails_only_the_verbosity_gate() -> None:
    report = evaluate(inputs(answers(VERBOSE, 40)), None, TrainerSettings(_env_file=None), fast_config())  # type: ignore[call-arg]
    assert report.failed() == ["verbosity"] and not report.passed
    assert report.metrics()["gate_verbosity"] == 10.0 and report.metrics()["gate_win_rate_passed"] == -1.0


def test_format_gaming_and_a_broken_canary_fail() -> None:
    listy = answers("# Answer\n- one\n- two", 4)
    report = evaluate(inputs(listy, canary_answer="London."), None, TrainerSettings(_env_file=None), fast_config())  # type: ignore[call-arg]
    assert report.failed() == ["format", "canaries"]
    assert "broken: capital" in next(g.detail for g in report.gates if g.name == "canaries")


def test_a_candidate_over_the_drift_budget_fails_the_kl_base_gate_alone() -> None:
    """Each round's step may be small (kl) while the steps add up far from the base (kl_base)."""
    settings = TrainerSettings(_env_file=None)  # type: ignore[call-arg]
    drifted = replace(inputs(answers(SHORT, 4)), kl=0.2, kl_base=settings.gate_max_kl_base + 0.1)
    assert evaluate(drifted, None, settings, fast_config()).failed() == ["kl_base"]
    within = replace(drifted, kl_base=settings.gate_max_kl_base - 0.01)
    assert evaluate(within, None, settings, fast_config()).failed() == []


GARBLED = "1. **Chek a moon:** Salmon Fillemmmal, jeine the bake."  # a KTO candidate's kind (docs/training.md)


def test_made_up_words_fail_the_non_words_gate_alone_and_no_vote_yields_it() -> None:
    settings = TrainerSettings(_env_file=None)  # type: ignore[call-arg]
    garbled = replace(inputs(answers(GARBLED, 4)), champion=answers("1. Combine the salmon and bake it.", 4),
                      markup_votes=VoteEvidence.of(pairs(GARBLED, "plain words", 16, 0), has_markup))
    report = evaluate(garbled, None, settings, fast_config())
    assert report.failed() == ["non_words"]
    assert report.metrics()["gate_non_words"] == pytest.approx(2 / 8)  # fillemmmal, jeine of 8 words
    # the champion's own rare words are its baseline: the same answers do not fail
    same = replace(garbled, champion=answers(GARBLED, 4))
    assert evaluate(same, None, settings, fast_config()).failed() == []
    # an app whose answers are in no language wordfreq knows switches it off, and the report says so
    off = TrainerSettings(_env_file=None, gate_non_word_language="")  # type: ignore[call-arg]
    gate = next(g for g in evaluate(garbled, None, off, fast_config()).gates if g.name == "non_words")
    assert gate.status == "skipped" and "gate_non_word_language" in gate.detail


def test_the_non_words_gate_reads_the_sampled_answers_users_get_when_there_are_some() -> None:
    settings = TrainerSettings(_env_file=None)  # type: ignore[call-arg]
    plain = answers("1. Combine the salmon and bake it.", 4)
    clean_greedy = replace(inputs(plain), champion=plain)  # greedy answers alike: nothing to see there
    garbled = replace(clean_greedy, champion_sampled=plain, candidate_sampled=answers(GARBLED, 4))
    report = evaluate(garbled, None, settings, fast_config())
    assert report.failed() == ["non_words"]
    assert "in 8 sampled answers" in next(g.detail for g in report.gates if g.name == "non_words")
    assert evaluate(clean_greedy, None, settings, fast_config()).failed() == []


def test_the_non_words_language_must_be_one_wordfreq_has_lists_for() -> None:
    with pytest.raises(ValidationError, match="no word lists for 'klingon'"):
        TrainerSettings(_env_file=None, gate_non_word_language="klingon")  # type: ignore[call-arg]
    assert TrainerSettings(_env_file=None, gate_non_word_language="de").gate_non_word_language == "de"  # type: ignore[call-arg]


def pairs(chosen: str, rejected: str, agreeing: int, disagreeing: int) -> list[PreferencePair]:
    """``agreeing`` votes for ``chosen`` over ``rejected``, ``disagreeing`` the other way round."""
    prompt = [{"role": "user", "content": "q"}]
    votes = [(chosen, rejected)] * agreeing + [(rejected, chosen)] * disagreeing
    return [PreferencePair("h", prompt, a, b, "a", "b", "pairwise", (), 1.0) for a, b in votes]


def test_drift_gates_yield_only_to_significant_votes_for_that_drift() -> None:
    settings = TrainerSettings(_env_file=None)  # type: ignore[call-arg]
    listy, verbose = answers("1. one\n2. two", 4), answers(VERBOSE, 40)
    markup_asked = VoteEvidence.of(pairs("1. a\n2. b", "a and b", 14, 2), has_markup)
    length_asked = VoteEvidence.of(pairs(VERBOSE, SHORT, 14, 2), word_count)
    for candidate, gate in ((listy, "format"), (verbose, "verbosity")):
        asked = replace(inputs(candidate), markup_votes=markup_asked, length_votes=length_asked)
        report = evaluate(asked, None, settings, fast_config())
        assert gate not in report.failed() and "users chose the" in next(
            g.detail for g in report.gates if g.name == gate)
        # a coin's worth of votes, no votes, or the evidence switched off: the gate holds
        for votes in (VoteEvidence.of(pairs("1. a\n2. b", "a and b", 9, 7), has_markup),
                      VoteEvidence.of(pairs(VERBOSE, SHORT, 9, 7), word_count), VoteEvidence.of([], word_count)):
            weak = replace(inputs(candidate), markup_votes=votes, length_votes=votes)
            assert gate in evaluate(weak, None, settings, fast_config()).failed()
        strict = TrainerSettings(_env_file=None, gate_vote_evidence_alpha=0.0)  # type: ignore[call-arg]
        assert gate in evaluate(asked, None, strict, fast_config()).failed()


def test_held_out_accuracy_fails_only_a_candidate_the_pairs_show_worse() -> None:
    settings = TrainerSettings(_env_file=None)  # type: ignore[call-arg]

    def accuracy_gate(champion: list[bool], candidate: list[bool], judged: TrainerSettings = settings) -> Any:
        metrics = [PairMetrics(sum(c) / len(c), 0.0, len(c), tuple(c)) for c in (champion, candidate)]
        report = evaluate(replace(inputs(answers(SHORT, 4)), champion_metrics=metrics[0], candidate_metrics=metrics[1]),
                          None, judged, fast_config())
        return next(g for g in report.gates if g.name == "heldout_accuracy")

    # 22 pairs: one fewer right (the champion wins 2 of 3 pairs they differ on) is noise and passes
    champion, one_fewer = [True] * 13 + [False] * 9, [True] * 11 + [False, False, True] + [False] * 8
    noise = accuracy_gate(champion, one_fewer)
    assert noise.status == "passed" and "the champion gets 2, the candidate 1" in noise.detail
    # worse on 8 of the 8 pairs they differ on: significant (p = 1/256), fails
    worse = accuracy_gate([True] * 16 + [False] * 6, [True] * 8 + [False] * 14)
    assert worse.status == "failed"
    # the strict setting: any drop fails
    strict = TrainerSettings(_env_file=None, gate_accuracy_alpha=1.0)  # type: ignore[call-arg]
    assert accuracy_gate(champion, one_fewer, strict).status == "failed"


def test_only_end_users_votes_are_evidence_of_what_users_asked_for() -> None:
    """An AI judge or constitutional revisions that favour longer answers do not unlock the verbosity gate."""
    machine = [replace(p, source=source) for p in pairs(VERBOSE, SHORT, 14, 2) for source in ("ai", "constitution")]
    assert VoteEvidence.of(machine, word_count).differing == 0
    assert VoteEvidence.of(machine + pairs(VERBOSE, SHORT, 14, 2), word_count).differing == 16


def test_vote_evidence_counts_only_pairs_that_differ() -> None:
    votes = pairs("1. a", "b", 5, 1) + pairs("plain", "also plain", 10, 0)
    evidence = VoteEvidence.of(votes, has_markup)
    assert (evidence.chose_more, evidence.differing) == (5, 6)
    assert 0.1 < evidence.p_value < 0.11  # P(X >= 5 | n=6, 1/2) = 7/64


def test_bootstrap_ci_brackets_the_win_rate() -> None:
    low, high = bootstrap_ci(np.array([1.0] * 15 + [0.0] * 5), 1000, seed=0)
    assert 0.5 < low < 0.75 < high <= 1.0
    assert bootstrap_ci(np.array([1.0, 0.0]), 1000, seed=0)[0] == 0.0


def test_shipped_canaries_load() -> None:
    canaries = load_canaries()
    assert {c.id for c in canaries} >= {"refuse-explosive", "capital-france"}
    assert canaries[0].holds("Sorry, I can't help with that.") and not canaries[0].holds("Step 1: buy pipes")


class _LengthJudge:
    """A judge that prefers longer answers: enough to exercise the gate's decision, which is what is tested."""

    def mean(self, prompts: list[list[dict[str, str]]], texts: list[str]) -> np.ndarray:
        return np.array([len(t) for t in texts], dtype=float)


def test_win_rate_is_judged_only_by_a_reward_model_better_than_a_coin() -> None:
    settings = TrainerSettings(_env_file=None)  # type: ignore[call-arg]
    candidate = inputs(answers(SHORT + " and a little more", 5))
    judge: Any = _LengthJudge()
    trusted = evaluate(candidate, judge, settings, fast_config(), reward_accuracy=0.9)
    gate = next(g for g in trusted.gates if g.name == "win_rate")
    assert gate.status == "passed" and gate.value == 1.0 and trusted.win_rate_ci == (1.0, 1.0)
    for weak in (0.55, float("nan"), None):
        report = evaluate(candidate, judge, settings, fast_config(), reward_accuracy=weak)
        gate = next(g for g in report.gates if g.name == "win_rate")
        assert gate.status == "skipped" and "verdict would be noise" in gate.detail and report.win_rate_ci is None


def test_win_rate_blocks_a_candidate_shown_worse_and_superiority_is_an_ops_setting() -> None:
    judge: Any = _LengthJudge()

    def verdict(candidate: Answers, settings: TrainerSettings) -> str:
        report = evaluate(inputs(candidate), judge, settings, fast_config(), reward_accuracy=0.9)
        return next(g.status for g in report.gates if g.name == "win_rate")

    default = TrainerSettings(_env_file=None)  # type: ignore[call-arg]
    superiority = TrainerSettings(_env_file=None, gate_win_rate_min_lower=0.5)  # type: ignore[call-arg]
    worse = Answers([[1]] * len(PROMPTS), ["S"] * len(PROMPTS))  # shorter than the champion's "Sure." everywhere
    mixed = Answers([[1]] * len(PROMPTS), [SHORT + " yes" if i % 2 else "S" for i in range(len(PROMPTS))])
    assert verdict(worse, default) == "failed"  # the judge is sure the candidate is worse
    assert verdict(mixed, default) == "passed"  # 4 of 8: no evidence either way
    assert verdict(mixed, superiority) == "failed"  # asked to be shown better, it is not
