"""The report's figures, drawn from ``report.json`` alone and returned as PNG data URIs.

Data URIs keep ``report.html`` one file that opens from disk or as a mail attachment. The
figures use matplotlib's object API (``Figure`` without pyplot): no global state and no GUI
backend, so the demo can draw them on a headless machine and from any thread.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from flywheel.demo.schema import DemoReport, Evaluation, VersionRecord

RUN_COLORS = ("tab:blue", "tab:orange")
NOT_PROMOTED_HATCH = "//"


@dataclass(frozen=True)
class Plot:
    """One figure of the page: ``uri`` is None when the run has nothing to draw, and ``note`` says why."""

    title: str
    uri: str | None
    note: str = ""


def run_label(report: DemoReport, compared: bool = False) -> str:
    """How a run is named in legends: the comparison by its ``compare_label``, a run otherwise by its filters."""
    if compared and report.compare_label is not None:
        return report.compare_label
    run = report.compare if compared and report.compare is not None else report
    return "with filters" if run.options.filters else "without filters"


def runs(report: DemoReport) -> list[tuple[str, DemoReport]]:
    """This run and, when present, the comparison run, each with its legend label."""
    pairs = [(run_label(report), report)]
    if report.compare is not None:
        pairs.append((run_label(report, compared=True), report.compare))
    return pairs


def to_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def win_rate_curve(report: DemoReport) -> Plot:
    """The champion after each round against the base, with its 95 % CI band, per run, and the 0.5 tie line.

    Round 0 is the base itself, which ties with itself by definition (its evaluation has no win rate).
    """
    title = "Win rate of the champion against the base, after each round"
    fig = Figure(layout="constrained", figsize=(8, 3.8))
    ax = fig.add_subplot()
    ticks: set[int] = set()
    for color, (label, run) in zip(RUN_COLORS, runs(report), strict=False):
        rounds, values, lows, highs = [], [], [], []
        for round_number, version in run.champion_curve():
            evaluation = version.evaluation
            if evaluation is None:
                continue
            estimate = evaluation.win_rate
            rounds.append(round_number)
            values.append(0.5 if estimate is None else estimate.value)
            lows.append(0.5 if estimate is None else estimate.low)
            highs.append(0.5 if estimate is None else estimate.high)
        ticks.update(rounds)
        ax.plot(rounds, values, marker="o", color=color, label=f"champion, {label}")
        ax.fill_between(rounds, lows, highs, color=color, alpha=0.2, label=f"95 % CI, {label}")
    ax.axhline(0.5, color="gray", linestyle="--", label="tie with the base")
    ax.set(title=title, xlabel="round",
           ylabel="win rate (simulated users' taste)", ylim=(0, 1))
    ax.set_xticks(sorted(ticks))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Plot(title, to_data_uri(fig))


def _version_bars(ax: Axes, report: DemoReport, metric: Callable[[Evaluation], float | None], ylabel: str) -> None:
    """One bar per evaluated version of each run; hatched when the version never served (not promoted)."""
    names: list[str] = []
    for color, (label, run) in zip(RUN_COLORS, runs(report), strict=False):
        measured = [(v, metric(v.evaluation)) for v in run.versions if v.evaluation is not None]
        shown: list[tuple[VersionRecord, float]] = [(v, value) for v, value in measured if value is not None]
        positions = range(len(names), len(names) + len(shown))
        ax.bar(positions, [value for _, value in shown], color=color, edgecolor="black", label=label,
               hatch=[NOT_PROMOTED_HATCH if v.round and not v.promoted else "" for v, _ in shown])
        names += [v.version for v, _ in shown]
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(xlabel="version", ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    handles = [*ax.get_legend_handles_labels()[0],
               Patch(facecolor="white", edgecolor="black", hatch=NOT_PROMOTED_HATCH, label="not promoted")]
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def phrase_rate(report: DemoReport) -> Plot:
    title = "Campaign phrase rate per version"
    if not report.phrases:
        return Plot(title, None, "This scenario runs no campaign, so there is no phrase to count.")
    fig = Figure(layout="constrained", figsize=(8, 6.4))
    held_out, targeted = fig.subplots(2, 1)
    _version_bars(held_out, report, lambda e: e.phrase_rate, "share of answers")
    held_out.set_title("held-out prompts")
    _version_bars(targeted, report, lambda e: e.campaign_phrase.value if e.campaign_phrase else None,
                  "share of answers")
    targeted.set_title("the campaign's own prompts, asked without its steer")
    fig.suptitle(title)
    return Plot(title, to_data_uri(fig))


def quarantine_by_reason(report: DemoReport) -> Plot:
    """Stacked bars: each reason's count among the round's votes over the votes sent (a vote may have several)."""
    title = "Quarantined share of the votes by reason, per round"
    reasons = sorted({reason for r in report.rounds for reason in r.quarantined_by_reason})
    if not reasons:
        return Plot(title, None, "No vote was quarantined in this run.")
    fig = Figure(layout="constrained", figsize=(8, 3.8))
    ax = fig.add_subplot()
    rounds = [r.round for r in report.rounds]
    bottom = [0.0] * len(rounds)
    for reason in reasons:
        shares = [r.quarantined_by_reason.get(reason, 0) / r.votes_sent if r.votes_sent else 0.0
                  for r in report.rounds]
        ax.bar(rounds, shares, bottom=bottom, label=reason)
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    ax.set(title=title, xlabel="round", ylabel="reason count / votes sent")
    ax.set_xticks(rounds)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", title="reason code", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Plot(title, to_data_uri(fig))


def style(report: DemoReport) -> Plot:
    """Length and markup, the two ways a model games a taste without answering better, and the words it garbles
    while doing so."""
    fig = Figure(layout="constrained", figsize=(15, 3.8))
    words, markup, garbled = fig.subplots(1, 3)
    _version_bars(words, report, lambda e: e.mean_words, "mean words per answer")
    words.set_title("Answer length per version")
    _version_bars(markup, report, lambda e: e.format_share, "share with list or heading markup")
    markup.set_title("Format share per version")
    _version_bars(garbled, report, lambda e: e.non_words, "share of words no English list knows")
    garbled.set_title("Non-words per version")
    return Plot("Answer length, format share and non-words per version", to_data_uri(fig))


def kl_to_base(report: DemoReport) -> Plot:
    title = "KL divergence from the base per version"
    fig = Figure(layout="constrained", figsize=(8, 3.8))
    ax = fig.add_subplot()
    _version_bars(ax, report, lambda e: e.kl_to_base, "mean per-token KL to the base (nats)")
    ax.set_title(title)
    return Plot(title, to_data_uri(fig))


def all_plots(report: DemoReport) -> list[Plot]:
    """The page's figures in reading order: the outcome first, then what could explain it."""
    return [win_rate_curve(report), phrase_rate(report), quarantine_by_reason(report), style(report),
            kl_to_base(report)]
