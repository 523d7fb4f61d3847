"""report.html shows what report.json holds: every version, the headline figures, the MLflow links, escaped text."""

from __future__ import annotations

import html
import re
from pathlib import Path

from flywheel.demo.page import render_page, write_report
from flywheel.demo.schema import DemoReport, Estimate


def _ci(estimate: Estimate) -> str:
    return f"{estimate.value:.1%} [{estimate.low:.1%}, {estimate.high:.1%}]"


def test_page_shows_every_version_of_both_runs_with_its_mlflow_link(report: DemoReport) -> None:
    assert report.compare is not None
    page = render_page(report)
    for run in (report, report.compare):
        for version in run.versions:
            assert f"<td>{version.version}</td>" in page
            if version.run_url is not None:
                assert f'href="{html.escape(version.run_url)}"' in page
    assert "Comparison run: without filters" in page


def test_headline_states_the_final_win_rate_phrase_rate_latency_and_swaps(report: DemoReport) -> None:
    page = render_page(report)
    final = report.champion_curve()[-1][1]
    assert final.version == "policy-v3"
    assert final.evaluation is not None and final.evaluation.win_rate is not None
    assert f"<b>{_ci(final.evaluation.win_rate)}</b>" in page
    assert "62.3% [56.3%, 67.3%]" in page
    assert ("Campaign phrase rate: policy-v3 0.9%; policy-base 0.6% on the held-out prompts; "
            "policy-v3 9.0% [4.5%, 18.0%]; policy-base 6.0% [3.0%, 12.0%] on the campaign's own prompts") in page
    assert "round 1: 12 min 24 s; round 3: 12 min 26 s" in page  # round 2 promoted nothing
    assert "28 chats sent during 2 swap(s), 0 failed" in page
    assert "Total time: 27 min 41 s (start-up 3 min 51 s)" in page


def test_rejected_candidate_shows_its_failed_gate_and_no_promotion(report: DemoReport) -> None:
    page = render_page(report)
    rejected = report.version("policy-v2")
    gate = next(g for g in rejected.gates if g.status == "failed")
    row = next(r for r in page.split("<tr>") if r.startswith("<td>policy-v2</td>"))
    assert f'class="failed" title="threshold {html.escape(gate.threshold)}; {html.escape(gate.detail)}"' in row
    assert "<td>no</td><td>no</td>" in row  # gates passed, promoted


def test_rounds_table_has_the_round_figures(report: DemoReport) -> None:
    page = render_page(report)
    rounds_table = page[page.index('<table class="rounds">'):]
    for r in report.rounds:
        assert (f"<td>{r.votes_sent}</td><td>{r.answers_unvoted}</td><td>{r.votes_failed}</td><td>{r.accepted}</td>"
                f"<td>{r.quarantined}</td>") in rounds_table
    assert "<td>88.0%</td><td>2.1%</td>" in rounds_table  # adversarial recall, honest false positive
    assert '<td class="prose">ai: a: 12, b: 9, tie: 19</td><td>human: 150, ai: 21</td>' in rounds_table
    assert "<td>10 min 0 s</td>" in rounds_table  # training CPU, every stage summed


def test_text_from_the_report_is_escaped(report: DemoReport) -> None:
    report.rounds[0].train_message = "<script>alert(1)</script>"
    report.compare_label = 'without "filters" & <b>'
    page = render_page(report)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "without &quot;filters&quot; &amp; &lt;b&gt;" in page


def test_every_image_is_inline(report: DemoReport) -> None:
    sources = re.findall(r'src="([^"]*)"', render_page(report))
    assert len(sources) == 5
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http" not in re.sub(r'href="[^"]*"', "", render_page(report)).replace("http-equiv", "")


def test_run_without_a_campaign_skips_the_phrase_plot_with_a_note(report_without_phrases: DemoReport) -> None:
    page = render_page(report_without_phrases)
    assert "This scenario runs no campaign" in page
    assert page.count("<img ") == 4
    assert "Campaign phrase rate:" not in page


def test_write_report_writes_json_and_html_with_the_same_numbers(report: DemoReport, tmp_path: Path) -> None:
    json_path, html_path = write_report(report, tmp_path / "out")
    assert (json_path.name, html_path.name) == ("report.json", "report.html")
    assert DemoReport.model_validate_json(json_path.read_text(encoding="utf-8")) == report
    assert html_path.read_text(encoding="utf-8") == render_page(report)


def test_demo_report_draws_a_finished_run_beside_another(tmp_path: Path) -> None:
    """`flywheel demo-report RUN --compare OTHER`: the ablation can run after the main run and still be drawn."""
    from typer.testing import CliRunner

    from flywheel.cli.main import app
    from tests.demo.conftest import make_report

    run, ablation = tmp_path / "run", tmp_path / "ablation"
    main_json, _ = write_report(make_report(), run)
    other_json, _ = write_report(make_report(filters=False, prefix="nofilter"), ablation)

    result = CliRunner().invoke(app, ["demo-report", str(main_json), "--compare", str(other_json)])

    assert result.exit_code == 0, result.output
    redrawn = DemoReport.model_validate_json(main_json.read_text(encoding="utf-8"))
    assert redrawn.compare == DemoReport.model_validate_json(other_json.read_text(encoding="utf-8"))
    assert redrawn.compare_label == "without filters"
    assert (run / "report.html").read_text(encoding="utf-8") == render_page(redrawn)


def test_demo_report_refuses_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flywheel.cli.main import app

    bad = tmp_path / "report.json"
    bad.write_text('{"not": "a report"}', encoding="utf-8")
    result = CliRunner().invoke(app, ["demo-report", str(bad), "--compare", str(bad)])
    assert result.exit_code != 0 and "cannot read a demo report" in result.output
