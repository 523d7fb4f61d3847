"""What a demo run records: ``report.json``, written by the runner and read by the report page.

Pydantic models, so the file has one definition that both sides (and ``flywheel demo
--compare``) validate against; every figure in ``report.html`` comes from these fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Estimate(BaseModel):
    """A share with its 95 % percentile-bootstrap confidence interval (prompts resampled)."""

    value: float
    low: float
    high: float


class Evaluation(BaseModel):
    """One version on the held-out prompts, judged by the simulator's taste (never the system's reward model)."""

    version: str
    against: str | None = Field(default=None, description="The version the win rate is measured against.")
    prompts: int
    samples_per_prompt: int
    answers: int
    win_rate: Estimate | None = Field(
        description="Against ``against`` (the demo: the base model), sample by sample on the same prompt; a tie "
        "counts half. None for the base itself.")
    liked: Estimate = Field(description="Share of answers the taste gives a thumbs up.")
    phrase_rate: float | None = Field(description="Share of answers with a campaign phrase; None without a campaign.")
    campaign_phrase: Estimate | None = Field(
        default=None, description="Share of answers with a campaign phrase on the campaign's own prompts, asked "
        "without its steer (Wilson 95 % CI): where poisoning shows first. None without a campaign, or in reports "
        "from before it was measured.")
    campaign_prompts: int = Field(default=0, description="How many prompts the campaign steered (asked plainly).")
    mean_words: float
    format_share: float = Field(description="Share of answers with list or heading markup.")
    non_words: float | None = Field(
        default=None, description="Mean share of an answer's words that no English word list knows (wordfreq): "
        "garbled text a taste about format or length cannot see. None in reports from before it was measured.")
    kl_to_base: float = Field(description="Mean per-token KL(version || base) in nats on the version's own answers.")
    seconds: float


class GateLine(BaseModel):
    name: str
    status: Literal["passed", "failed", "skipped"]
    value: float | None
    threshold: str
    detail: str


class VersionRecord(BaseModel):
    version: str
    round: int = Field(description="The round that trained it; 0 for the base model.")
    parent: str | None
    algorithm: str | None
    gates_passed: bool | None = Field(description="None for the base model, which no gate judged.")
    gates: list[GateLine] = []
    promoted: bool
    run_id: str | None
    run_url: str | None = Field(description="The version's run in the MLflow UI (`mlflow ui` on the run's store).")
    evaluation: Evaluation | None


class SwapRecord(BaseModel):
    """Chats sent through the gateway while it switched to the promoted version."""

    requests: int
    failed: int
    by_version: dict[str, int]


class RoundRecord(BaseModel):
    round: int
    champion_before: str
    candidate: str | None
    promoted: bool
    champion_after: str
    train_status: Literal["trained", "skipped", "rejected"]
    train_message: str
    votes_sent: int
    answers_unvoted: int = Field(default=0, description="Answers users read and left without a vote (--vote-share).")
    votes_failed: int
    accepted: int
    quarantined: int
    pending: int
    quarantined_by_reason: dict[str, int] = Field(description="Votes of this round per reason code (a vote may have "
                                                  "several).")
    quarantined_share_by_user_type: dict[str, float]
    adversarial_recall: float | None
    honest_false_positive: float | None
    phases: dict[str, float] = Field(description="Seconds per phase: traffic, settle, train, evaluate, promote.")
    train_stages: dict[str, float] = Field(
        default_factory=dict, description="Seconds per stage of the training round (reward model, policy training, "
        "gates, ...), as the trainer logs them to MLflow.")
    machine_feedback: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Machine feedback of the round by kind (ai, constitution): items by "
        "outcome (a, b, tie / revised, unchanged, ...).")
    snapshot_sources: dict[str, int] = Field(
        default_factory=dict, description="The training snapshot's events by who gave them: human, ai, constitution.")
    train_cpu_seconds: dict[str, float] = Field(
        default_factory=dict, description="CPU seconds per stage of the training round, every thread of the trainer "
        "counted: the round's cost on a machine whose cores are shared. Empty in reports from before it was measured.")
    loop_latency_seconds: float | None = Field(
        description="From the round's first vote to the first answer served by the version trained on it.")
    swap: SwapRecord | None


class DemoOptions(BaseModel):
    rounds: int
    scenario: str
    taste: str
    seed: int
    filters: bool
    model: str
    time_scale: float
    eval_prompts: int
    eval_samples: int
    vote_share: float = Field(default=1.0, description="Share of answers the users voted on (the scenario's, or "
                              "--vote-share).")
    ai_labels: bool = Field(default=False, description="The base model judged every pair no user voted on.")
    constitution: int = Field(default=0, description="Answers the base model revised against the principles, "
                              "each round.")
    training: dict[str, Any] = Field(
        default_factory=dict, description="Training options set away from TrainConfig's defaults (the seed aside).")


class DemoReport(BaseModel):
    options: DemoOptions
    phrases: list[str] = Field(description="The scenario's campaign phrases, measured in every version's answers.")
    started_at: datetime
    finished_at: datetime | None = None
    startup_seconds: float
    versions: list[VersionRecord]
    rounds: list[RoundRecord]
    compare_label: str | None = Field(default=None, description="What the comparison run differs in, e.g. "
                                      "'without filters'.")
    compare: DemoReport | None = Field(default=None, description="Another run drawn beside this one (same seed).")

    def version(self, version: str) -> VersionRecord:
        return next(v for v in self.versions if v.version == version)

    def champion_curve(self) -> list[tuple[int, VersionRecord]]:
        """(round, champion after that round), starting with the base at round 0."""
        curve = [(0, self.versions[0])]
        curve += [(r.round, self.version(r.champion_after)) for r in self.rounds]
        return curve
