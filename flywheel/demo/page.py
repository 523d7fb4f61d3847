"""``report.html``: a demo run's numbers as one page a person can read, built from ``report.json`` alone.

The page is self-contained (inline CSS, figures as data URIs, no script) so it opens from disk
anywhere, and its Content-Security-Policy forbids every outside load, so a page that renders
in a browser without console errors is known to carry everything it shows. Every text comes
from the report and is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

from flywheel.demo.plots import Plot, all_plots, run_label
from flywheel.demo.schema import DemoReport, Estimate, Evaluation, GateLine, RoundRecord, VersionRecord

MISSING = "—"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1, h2, h3 { font-weight: 600; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; white-space: nowrap; }
th { background: #f3f3f3; }
td.prose { white-space: normal; min-width: 14em; }
.passed { color: #17692b; } .failed { color: #b00020; font-weight: 600; } .skipped { color: #777; }
.headline li { margin: 0.2em 0; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-weight: 600; margin-bottom: 0.3em; }
.wide { overflow-x: auto; }
.note { color: #555; font-style: italic; }
"""


def _text(value: object) -> str:
    return html.escape(str(value))


def _share(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1%}"


def _estimate(estimate: Estimate | None) -> str:
    """A share with its CI, e.g. ``62.3% [57.1%, 67.4%]``."""
    if estimate is None:
        return MISSING
    return f"{estimate.value:.1%} [{estimate.low:.1%}, {estimate.high:.1%}]"


def _number(value: float | None, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _duration(seconds: float | None) -> str:
    """Seconds as a person reads them: ``48.2 s`` or ``4 min 12 s``."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _yes_no(value: bool | None) -> str:
    return MISSING if value is None else ("yes" if value else "no")


def _counts(counts: Mapping[str, float], share: bool = False) -> str:
    return ", ".join(f"{key}: {_share(value) if share else value}" for key, value in counts.items()) or MISSING


def _table(headers: Sequence[str], rows: Iterable[Iterable[str]], css_class: str,
           prose: Collection[str] = ()) -> str:
    """An HTML table of already escaped cells; cells stay on one line except in the ``prose`` columns."""
    opening = ['<td class="prose">' if header in prose else "<td>" for header in headers]
    head = "<thead><tr>" + "".join(f"<th>{_text(h)}</th>" for h in headers) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"{o}{cell}</td>" for o, cell in zip(opening, row, strict=True)) + "</tr>"
                   for row in rows)
    return f'<div class="wide"><table class="{css_class}">{head}<tbody>{body}</tbody></table></div>'


def _final(report: DemoReport) -> VersionRecord:
    return report.champion_curve()[-1][1]


def _total_seconds(report: DemoReport) -> float | None:
    if report.finished_at is None:
        return None
    return (report.finished_at - report.started_at).total_seconds()


def _headline(report: DemoReport) -> str:
    """The outcome in a few lines: how the final champion compares with the base, and how fast the loop turned."""
    base, final = report.versions[0], _final(report)
    lines = []
    if final is base:
        lines.append(f"No round promoted a version: the base <b>{_text(base.version)}</b> is still the champion.")
    elif final.evaluation is not None:
        lines.append(f"Win rate of the final champion <b>{_text(final.version)}</b> against the base: "
                     f"<b>{_estimate(final.evaluation.win_rate)}</b> (95 % CI).")
    evaluations = [(v, v.evaluation) for v in (final, base) if v.evaluation is not None]
    if evaluations:
        lines.append("Liked by the simulated users: " + "; ".join(
            f"{_text(v.version)} {_estimate(e.liked)}" for v, e in evaluations) + ".")
    if report.phrases and evaluations:
        lines.append("Campaign phrase rate: " + "; ".join(
            f"{_text(v.version)} {_share(e.phrase_rate)}" for v, e in evaluations) + " on the held-out prompts; "
            + "; ".join(f"{_text(v.version)} {_estimate(e.campaign_phrase)}" for v, e in evaluations)
            + " on the campaign's own prompts asked without its steer.")
    latencies = [f"round {r.round}: {_duration(r.loop_latency_seconds)}"
                 for r in report.rounds if r.loop_latency_seconds is not None]
    lines.append("Loop latency (a round's first vote to the first answer served by the version trained on it): "
                 + ("; ".join(latencies) if latencies else "no round served a version of its own") + ".")
    swaps = [r.swap for r in report.rounds if r.swap is not None]
    if swaps:
        lines.append(f"Hot swaps: {sum(s.requests for s in swaps)} chats sent during {len(swaps)} swap(s), "
                     f"{sum(s.failed for s in swaps)} failed.")
    lines.append(f"Total time: {_duration(_total_seconds(report))} (start-up {_duration(report.startup_seconds)}).")
    return '<ul class="headline">' + "".join(f"<li>{line}</li>" for line in lines) + "</ul>"


def _options(report: DemoReport) -> str:
    rows = [[_text(name), _text(value)] for name, value in report.options.model_dump().items()]
    rows += [
        ["campaign phrases", _text(", ".join(report.phrases) or "none")],
        ["started at", _text(report.started_at.isoformat(timespec="seconds"))],
        ["finished at", _text(report.finished_at.isoformat(timespec="seconds") if report.finished_at else "no")],
    ]
    return _table(["option", "value"], rows, "options")


def _gate_cell(gate: GateLine | None) -> str:
    """Status and value; the threshold and the gate's own explanation show on hover."""
    if gate is None:
        return MISSING
    value = MISSING if gate.value is None else f"{gate.value:.3g}"
    tip = html.escape(f"threshold {gate.threshold}; {gate.detail}", quote=True)
    return f'<span class="{gate.status}" title="{tip}">{gate.status}</span> {value}'


def _run_link(version: VersionRecord) -> str:
    if version.run_url is None:
        return MISSING
    label = (version.run_id or "run")[:8]
    return f'<a href="{html.escape(version.run_url, quote=True)}">{_text(label)}</a>'


def _versions(report: DemoReport) -> str:
    gate_names = list(dict.fromkeys(g.name for v in report.versions for g in v.gates))
    headers = ["version", "round", "parent", "algorithm", *(f"gate {name}" for name in gate_names), "gates passed",
               "promoted", "win rate vs base [95 % CI]", "liked [95 % CI]", "phrase rate",
               "phrase on campaign prompts [95 % CI]", "mean words", "format share",
               "non-words", "KL to base (nats)", "eval time", "MLflow run"]

    def row(version: VersionRecord) -> list[str]:
        gates = {g.name: g for g in version.gates}
        evaluation: Evaluation | None = version.evaluation
        measured = [MISSING] * 9 if evaluation is None else [
            _estimate(evaluation.win_rate), _estimate(evaluation.liked), _share(evaluation.phrase_rate),
            _estimate(evaluation.campaign_phrase),
            _number(evaluation.mean_words, 1), _share(evaluation.format_share),
            _number(evaluation.non_words, 3), _number(evaluation.kl_to_base, 4),
            _duration(evaluation.seconds)]
        return [_text(version.version), str(version.round), _text(version.parent or MISSING),
                _text(version.algorithm or MISSING), *(_gate_cell(gates.get(name)) for name in gate_names),
                _yes_no(version.gates_passed), _yes_no(version.promoted), *measured, _run_link(version)]

    return _table(headers, (row(v) for v in report.versions), "versions")


def _rounds(report: DemoReport) -> str:
    phase_names = list(dict.fromkeys(name for r in report.rounds for name in r.phases))
    headers = ["round", "champion before", "candidate", "train status", "train message", "promoted",
               "champion after", "votes sent", "answers unvoted", "votes failed", "accepted", "quarantined", "pending",
               "quarantined by reason", "quarantined share by user type", "adversarial recall", "honest false positive",
               "machine feedback", "snapshot by source",
               *(f"{name} time" for name in phase_names), "training stages", "training CPU", "loop latency",
               "swap requests", "swap failed", "served during swap"]

    def row(r: RoundRecord) -> list[str]:
        swap = r.swap
        return [str(r.round), _text(r.champion_before), _text(r.candidate or MISSING), _text(r.train_status),
                _text(r.train_message), _yes_no(r.promoted), _text(r.champion_after), str(r.votes_sent),
                str(r.answers_unvoted), str(r.votes_failed), str(r.accepted), str(r.quarantined), str(r.pending),
                _text(_counts(r.quarantined_by_reason)), _text(_counts(r.quarantined_share_by_user_type, share=True)),
                _share(r.adversarial_recall), _share(r.honest_false_positive),
                _text("; ".join(f"{kind}: {_counts(outcomes)}" for kind, outcomes in r.machine_feedback.items())
                      or MISSING),
                _text(_counts(r.snapshot_sources)),
                *(_duration(r.phases.get(name)) for name in phase_names),
                _text(", ".join(f"{name} {_duration(seconds)}" for name, seconds in r.train_stages.items())),
                _duration(sum(r.train_cpu_seconds.values()) if r.train_cpu_seconds else None),
                _duration(r.loop_latency_seconds),
                MISSING if swap is None else str(swap.requests), MISSING if swap is None else str(swap.failed),
                MISSING if swap is None else _text(_counts(swap.by_version))]

    return _table(headers, (row(r) for r in report.rounds), "rounds",
                  prose=("train message", "quarantined by reason", "quarantined share by user type", "machine feedback",
                         "training stages"))


def _figure(plot: Plot) -> str:
    """The image carries its own title; a figure with nothing to draw shows the title and why."""
    if plot.uri is None:
        return f'<figure><figcaption>{_text(plot.title)}</figcaption><p class="note">{_text(plot.note)}</p></figure>'
    return f'<figure><img src="{plot.uri}" alt="{html.escape(plot.title, quote=True)}"></figure>'


def _run_sections(report: DemoReport, level: int, figures: Sequence[Plot] = ()) -> list[str]:
    """Outcome, options, figures (when given), versions and rounds of one run, under headings of ``level``."""
    h = f"h{level}"
    return [
        f"<{h}>Outcome</{h}>", _headline(report),
        f"<{h}>Options</{h}>", _options(report),
        *([f"<{h}>Figures</{h}>", *(_figure(p) for p in figures)] if figures else []),
        f"<{h}>Versions</{h}>", _versions(report),
        f"<{h}>Rounds</{h}>", _rounds(report),
    ]


def render_page(report: DemoReport) -> str:
    """The whole page: this run's sections with the figures (which draw both runs), then the comparison run's."""
    parts = _run_sections(report, level=2, figures=all_plots(report))
    if report.compare is not None:
        parts += [f'<section class="compare"><h2>Comparison run: {_text(run_label(report, compared=True))}</h2>',
                  *_run_sections(report.compare, level=3), "</section>"]
    title = f"Flywheel demo: {run_label(report)}, scenario {report.options.scenario}, taste {report.options.taste}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{_text(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{_text(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_report(report: DemoReport, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` (the same numbers) into ``out_dir``; return (json, html)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    html_path.write_text(render_page(report), encoding="utf-8")
    return json_path, html_path
