"""A one-round `flywheel demo` on a tiny model, on its own real stack: every figure of the report comes from the run.

The run starts its own broker, vLLM engine (a 2-layer Llama), worker and gateway, plays a
small scenario, trains one real DPO round and promotes through the admin endpoint. The
win-rate gate is set to measure without blocking (``FLYWHEEL_GATE_WIN_RATE_MIN_UPPER=0``):
a reward model trained on a tiny random model's answers may judge its candidate worse, and this
test is about the demo's bookkeeping and the promotion under load. That the default gate blocks a
candidate its judge shows worse is tested in ``tests/trainer/test_trainer_gates.py``; here the
report's gate lines must be the run's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from rich.console import Console
from sqlalchemy import select

from feedback.ai.label import judge_rater, pairs_to_label
from feedback.db.models import AliasMove, Feedback, Quarantine
from feedback.db.session import make_engine, session_factory
from flywheel.demo.evaluation import PROMPT_SET, non_word_share
from flywheel.demo.runner import DemoRun
from flywheel.demo.schema import DemoOptions, DemoReport
from flywheel.simulation.scenario import load_scenario
from flywheel.simulation.tastes import make_taste
from flywheel.simulation.truth import read_truth
from flywheel.simulation.users import campaign_prompts, load_prompts, mentions
from serving.settings import ServingSettings
from trainer.base_model import build_tiny_model
from trainer.config import TrainConfig

pytestmark = [pytest.mark.engine, pytest.mark.demo]

SCENARIO = {
    "name": "tiny-demo", "seed": 5, "time_scale": 0.01, "concurrency": 8, "arrival_seconds": 5, "prompt_pool": 30,
    "vote_share": 0.7,
    "chat": {"max_tokens": 24, "temperature": 1.0}, "preference": {"taste": "concise", "max_words": 12},
    "groups": [
        {"type": "honest", "count": 8, "events_per_user": 8, "pairwise_share": 0.9},
        {"type": "fast_bot", "count": 1, "events_per_user": 16},
        {"type": "campaign", "count": 4, "events_per_user": 4, "phrase": "bestdeals.example"},
    ],
}


def test_one_round_demo_reports_what_happened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_GATE_WIN_RATE_MIN_UPPER", "0")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    scenario = load_scenario(path)
    model = build_tiny_model(tmp_path / "model")
    options = DemoOptions(rounds=1, scenario=scenario.name, taste="concise", seed=3, filters=True,
                          model=str(model), time_scale=0.01, eval_prompts=4, eval_samples=2, vote_share=0.7,
                          ai_labels=True, constitution=3)
    # drift_check_steps=0: a random tiny model is past any drift budget after one step, and the budget would hand
    # back the base model; the budget has its own tests (tests/trainer/test_trainer_drift_budget.py).
    config = TrainConfig(seed=3, max_steps=3, reward_max_steps=2, gate_prompts=4, gate_max_new_tokens=12,
                         max_length=128, drift_check_steps=0)
    out = tmp_path / "run"
    report = DemoRun(options, scenario, out, Console(width=120), config).run()

    assert DemoReport.model_validate_json((out / "report.json").read_text()) == report
    (round_,) = report.rounds
    truth = list(read_truth(out / "round-1" / "truth.jsonl"))
    assert round_.answers_unvoted > 0
    assert round_.votes_sent == len(truth) == scenario.planned_events - round_.votes_failed - round_.answers_unvoted
    assert round_.accepted + round_.quarantined + round_.pending == round_.votes_sent
    sessions = session_factory(make_engine(f"sqlite:///{out / 'stack' / 'flywheel.db'}"))
    with sessions() as session:
        reasons = session.scalars(select(Quarantine.reasons).where(
            Quarantine.event_id.in_([r.event_id for r in truth]))).all()
        moves = session.scalars(select(AliasMove).where(AliasMove.action == "promote")).all()
    assert round_.quarantined == len(reasons) and sum(round_.quarantined_by_reason.values()) == sum(map(len, reasons))
    assert round_.quarantined_share_by_user_type["fast_bot"] > 0.5  # a bot voting at once, always the same way

    # Machine feedback before training: the base model judged every pair nobody voted on, and tried 3 revisions;
    # the worker had stored every verdict before the snapshot was taken.
    judge = ServingSettings().base_engine_model
    with sessions() as session:
        left = pairs_to_label(session, judge, 10**6)  # what a `flywheel label` now would still ask about
        verdicts = [*session.scalars(select(Feedback.choice).where(Feedback.user_id == judge_rater(judge))),
                    *session.scalars(select(Quarantine.event_id).where(Quarantine.user_id == judge_rater(judge)))]
    ai = round_.machine_feedback["ai"]
    assert sum(ai.values()) > 0 and len(left) == ai.get("unparsed", 0) + ai.get("failed", 0)
    assert len(verdicts) == sum(n for outcome, n in ai.items() if outcome in ("a", "b", "tie"))
    assert sum(round_.machine_feedback["constitution"].values()) == 3
    assert round_.snapshot_sources["human"] > 0 and set(round_.snapshot_sources) <= {"human", "ai", "constitution"}

    # The candidate was trained, registered, judged and promoted as ops would, while chats kept flowing.
    assert round_.train_status == "trained" and round_.candidate == "2" and round_.promoted
    candidate = report.version("2")
    assert candidate.promoted and candidate.gates_passed and candidate.run_id and candidate.run_url
    metrics = MlflowClient(f"sqlite:///{out / 'stack' / 'mlflow.db'}").get_run(candidate.run_id).data.metrics
    for gate in candidate.gates:  # the report's gate lines are the run's
        assert gate.status == {1.0: "passed", 0.0: "failed", -1.0: "skipped"}[metrics[f"gate_{gate.name}_passed"]]
    assert next(g.threshold for g in candidate.gates if g.name == "win_rate") == "CI high >= 0"
    assert [(m.to_version, m.actor) for m in moves] == [("2", "app:demo")]
    assert round_.swap is not None and round_.swap.failed == 0 and round_.swap.by_version.get("2", 0) >= 1
    assert round_.loop_latency_seconds is not None and round_.loop_latency_seconds > 0
    assert set(round_.phases) == {"traffic", "machine_feedback", "settle", "train", "evaluate", "promote"}
    assert set(round_.train_cpu_seconds) == set(round_.train_stages) - {"per_step"}
    assert metrics["cpu_seconds_policy"] == round_.train_cpu_seconds["policy"] > 0

    # Every version's figures are recomputed from the answers on disk with the users' taste.
    prompts = {p.id: p.prompt for p in load_prompts(PROMPT_SET)}
    answers = {v: [json.loads(line) for line in (out / "answers" / f"v{v}.jsonl").read_text().splitlines()]
               for v in ("1", "2")}
    assert len(answers["1"]) == len(answers["2"]) == 4 * 2 == candidate.evaluation.answers  # type: ignore[union-attr]
    taste = make_taste("concise", 12)
    scores = {"a": 1.0, "tie": 0.5, "b": 0.0}
    wins = [scores[taste.pick(prompts[mine["prompt_id"]], mine["text"], theirs["text"])]
            for mine, theirs in zip(answers["2"], answers["1"], strict=True)]
    evaluation = candidate.evaluation
    assert evaluation is not None and evaluation.win_rate is not None
    assert evaluation.win_rate.value == pytest.approx(np.mean(wins))
    assert evaluation.win_rate.low <= evaluation.win_rate.value <= evaluation.win_rate.high
    assert evaluation.mean_words == pytest.approx(np.mean([len(a["text"].split()) for a in answers["2"]]))
    assert evaluation.phrase_rate is not None and evaluation.kl_to_base >= 0
    assert evaluation.non_words == pytest.approx(np.mean([non_word_share(a["text"]) for a in answers["2"]]))
    # The campaign's own prompts, asked plainly: 32 samples each, the phrase counted there.
    asked = [json.loads(line) for line in (out / "answers" / "v2-campaign.jsonl").read_text().splitlines()]
    assert {a["prompt_id"] for a in asked} == {p.id for p in campaign_prompts(scenario)}
    assert evaluation.campaign_phrase is not None and len(asked) == 32 * evaluation.campaign_prompts
    assert evaluation.campaign_phrase.value == pytest.approx(np.mean([mentions(a["text"], "bestdeals.example")
                                                                      for a in asked]))
    assert report.versions[0].evaluation is not None and report.versions[0].evaluation.win_rate is None

    page = (out / "report.html").read_text()
    assert f"{evaluation.win_rate.value:.1%}" in page and candidate.run_id in page
