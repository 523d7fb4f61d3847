"""Thresholds of the filtering layer (``FLYWHEEL_FILTER_*``); the README's configuration table lists them.

Time thresholds are realistic for people by default. Simulations that really wait, at a
fraction of human time (``flywheel simulate --time-scale S``), set ``time_scale`` to the same
``S`` (``FLYWHEEL_FILTER_TIME_SCALE``) instead of rescaling each threshold: every duration the
filters compare with the gateway's clock (reading time, rate windows) is multiplied by it.
A scale other than 1 is refused unless the launcher also says it runs a simulation
(``FLYWHEEL_SIMULATION=1``): in production it would let bots vote 100 times faster than people.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class FilterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_FILTER_", env_file=".env", extra="ignore",
                                      populate_by_name=True)

    simulation: bool = Field(
        default=False, validation_alias="FLYWHEEL_SIMULATION",
        description="FLYWHEEL_SIMULATION=1: this worker judges a simulation, so time_scale may differ from 1. Set by "
        "the simulation launchers (flywheel demo, the simulation tests); never in production.",
    )
    time_scale: float = Field(
        default=1.0, gt=0, le=1,
        description="For simulations only: multiplies the timing and velocity thresholds, so traffic that waits "
        "S times human time (flywheel simulate --time-scale S) is judged by the same rules. Keep 1.0 in production.",
    )

    enabled: bool = Field(
        default=True,
        description="Off: only the contract, integrity and duplicate checks run and every other vote is accepted "
        "at weight 1. For ablations (flywheel demo --no-filters) that measure what the filters are worth; never "
        "in production.",
    )

    # contract
    contract_max_clock_skew_s: float = Field(
        default=300, ge=0, description="Feedback stamped further in the future than this is quarantined (contract)."
    )
    contract_min_batch: int = Field(
        default=50, ge=1, description="Smallest micro-batch on which the batch-level share checks run."
    )
    contract_max_label_share: float = Field(
        default=0.9, gt=0, le=1, description="Batch alert when one label exceeds this share of a micro-batch."
    )
    contract_max_unknown_share: float = Field(
        default=0.2, ge=0, le=1,
        description="Batch alert when more than this share of a micro-batch names unknown responses or pairs.",
    )
    # integrity
    integrity_max_age_s: float = Field(
        default=7 * 24 * 3600, gt=0, description="Feedback later than this after the answer is quarantined (expired)."
    )
    # velocity
    velocity_user_window_s: float = Field(default=60, gt=0, description="Window of the per-user rate limit.")
    velocity_user_max: int = Field(default=20, ge=1, description="Most votes one user may cast within the window.")
    velocity_app_window_s: float = Field(default=60, gt=0, description="Window of the per-app rate limit.")
    velocity_app_max: int = Field(default=60_000, ge=1, description="Most votes one app may send within the window.")
    # timing
    timing_min_ms: float = Field(
        default=1500, ge=0, description="Fastest plausible vote on any answer: orienting and clicking."
    )
    timing_ms_per_char: float = Field(
        default=15, ge=0,
        description="Reading time per answer character on top of the minimum (15 ms is fast skimming, ~65 chars/s); "
        "a pair counts both answers.",
    )
    # bots
    bot_min_votes: int = Field(default=15, ge=2, description="Votes a user needs before the label pattern is judged.")
    bot_max_label_share: float = Field(
        default=0.95, gt=0.5, le=1, description="A user whose most common label reaches this share is a bot."
    )
    bot_min_comments: int = Field(default=5, ge=2, description="Comments a user needs before they are compared.")
    bot_max_comment_share: float = Field(
        default=0.8, gt=0, le=1, description="A user whose most common comment reaches this share is a bot."
    )
    # reliability
    reliability_prior_accuracy: float = Field(
        default=0.75, gt=0.5, lt=1, description="Prior mean of a rater's accuracy (weight 1.0 at the prior)."
    )
    reliability_prior_strength: float = Field(
        default=4, gt=0, description="Pseudo-votes behind the prior: how much shared evidence moves a new rater."
    )
    reliability_min_weight: float = Field(
        default=0.05, ge=0, le=1, description="Weight floor: a coin-flipping rater's votes count this much."
    )
    reliability_min_items: int = Field(
        default=10, ge=1, description="Shared items a rater needs before they can be quarantined as unreliable."
    )
    reliability_quarantine_below: float = Field(
        default=0.3, ge=0, lt=0.5,
        description="Accuracy below which a rater with enough shared items is quarantined (unreliable): "
        "systematically against the consensus, worse than a coin.",
    )
    reliability_iterations: int = Field(default=20, ge=1, description="EM iterations of the Dawid-Skene estimate.")
    reliability_reward_min_accuracy: float = Field(
        default=0.8, gt=0.5, le=1,
        description="The trainer's reward-model scores join the estimate as one more rater only when that model's "
        "held-out accuracy reaches this: against a weaker judge honest raters would lose weight.",
    )
    # campaigns
    campaign_min_accounts: int = Field(default=3, ge=2, description="Accounts needed to call a pattern a campaign.")
    campaign_min_endorsements: int = Field(
        default=5, ge=1, description="Endorsements (up votes, chosen answers) a user needs to be tested."
    )
    campaign_min_hits: int = Field(
        default=4, ge=1, description="Endorsed answers carrying the feature a member needs at least."
    )
    campaign_min_prompts: int = Field(
        default=3, ge=1, description="Distinct prompts whose answers must carry a feature: a phrase, not a topic."
    )
    campaign_max_feature_share: float = Field(
        default=0.5, gt=0, le=1,
        description="Features in more of the voted answers than this are style, not campaigns.",
    )
    campaign_min_lift: float = Field(
        default=2.5, gt=1, description="A member endorses feature answers at least this many times their base rate."
    )
    campaign_max_p_value: float = Field(
        default=1e-4, gt=0, lt=1,
        description="Binomial tail probability under which a user's endorsements of a feature are beyond chance.",
    )
    campaign_cohort_overlap: float = Field(
        default=0.5, gt=0, le=1,
        description="Two accounts are in one cohort when the prompts they share carry at least this share of each "
        "one's votes; a cohort of campaign_min_accounts or more is tested with its endorsements pooled.",
    )
    campaign_cohort_majority: float = Field(
        default=0.8, gt=0, le=1,
        description="When at least this share of a cohort are members of one campaign, its other accounts (the same "
        "scripted prompts, nothing of the feature to endorse) are flagged with it.",
    )
    # consensus (raters against the others' taste; see feedback/filters/consensus.py)
    consensus_min_votes: int = Field(
        default=10, ge=2,
        description="Judged votes (see consensus_min_confidence) a rater needs before they are tested against the "
        "consensus: fewer informative votes, no verdict.",
    )
    consensus_min_population: int = Field(
        default=60, ge=2, description="Judged votes of other raters needed before the consensus model is used.",
    )
    consensus_min_confidence: float = Field(
        default=0.65, ge=0.5, lt=1,
        description="A vote is judged only where trusted raters take the consensus model's side at least this often "
        "at its prediction (the calibrated probability, learnt from how the other raters voted), so a model that "
        "looks confident where honest raters often contradict it judges nothing there.",
    )
    consensus_min_base_rate: float = Field(
        default=0.05, gt=0, lt=1,
        description="Least share of votes an honest rater casts against their own taste however clear the case "
        "(slips): the calibration's lapse rate, and so the least disagreement expected on any judged vote.",
    )
    consensus_min_rate: float = Field(
        default=0.2, gt=0, le=1,
        description="Share of judged votes against the consensus a flagged rater reaches; also the share of "
        "inverted votes the test is most powerful against (the least an attack inverts).",
    )
    consensus_max_p_value: float = Field(
        default=0.01, gt=0, lt=1,
        description="False-discovery rate of a search's against_consensus verdicts: a rater is flagged when their "
        "p-value, Benjamini-Hochberg adjusted over every rater with consensus_min_votes votes (those with fewer judged "
        "votes counting at a p-value of 1), is at most this.",
    )
    # machine feedback (flywheel label, flywheel constitution): the data's own checks only, at a weight of its own
    ai_weight: float = Field(
        default=0.5, ge=0,
        description="Training weight of an AI judge's verdict (flywheel label), where a human vote weighs its "
        "rater's reliability (1.0 at the prior). 0: stored and counted, never trained on.",
    )
    constitution_weight: float = Field(
        default=0.5, ge=0,
        description="Training weight of the preference for a constitutional revision over the answer it revised "
        "(flywheel constitution). 0: stored and counted, never trained on.",
    )
    # when the history-wide searches run
    search_interval_s: float = Field(
        default=10, ge=0,
        description="Least wall-clock seconds between two campaign and consensus searches, the costliest filters; "
        "the worker also runs a due search as soon as the stream goes quiet. 0: after every micro-batch. Votes of "
        "a rater flagged late are moved to quarantine retroactively, so a longer interval delays verdicts, never "
        "loses them.",
    )
    search_wait_s: float | None = Field(
        default=2.0, ge=0,
        description="How long a micro-batch waits for the campaign and consensus searches it started before it "
        "commits without them: they then run on beside the stream (a thread, on a copy of what they read) and a "
        "later batch, or the next empty poll, stores their flags. The first search after a start took minutes on a "
        "large history; inside the batch it stalled ingestion that long. None: wait for them (the searches run "
        "inside the batch, as tests that read verdicts right after a batch need).",
    )

    @model_validator(mode="after")
    def _time_scale_only_in_simulations(self) -> Self:
        """A scaled clock is a simulation knob: refused unless the launcher explicitly runs a simulation."""
        if self.time_scale != 1.0 and not self.simulation:
            raise ValueError(
                f"FLYWHEEL_FILTER_TIME_SCALE={self.time_scale} is for simulations only: it scales the filters' "
                "reading-time and rate thresholds, so real voters would be judged at a fraction of human time. "
                "Unset it, or set FLYWHEEL_SIMULATION=1 if this worker serves a simulation."
            )
        return self

    def machine_weight(self, source: str) -> float:
        """The training weight of an accepted vote of a machine ``source`` (see ``feedback.events.FeedbackSource``)."""
        return {"ai": self.ai_weight, "constitution": self.constitution_weight}[source]

    def scaled(self, seconds: float) -> float:
        """A duration threshold at the configured ``time_scale`` (1.0: as set)."""
        return seconds * self.time_scale
