"""``flywheel demo`` and ``flywheel eval``: proof that the loop makes the model better by its users' judgement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flywheel.cli.common import console, fail, setup_logging
from flywheel.cli.config_options import config_options
from flywheel.demo.schema import DemoReport, Estimate
from flywheel.simulation.scenario import ScenarioError, load_scenario, with_overrides
from flywheel.simulation.tastes import TASTES
from trainer.base_model import SHARED_DEFAULT_MODEL, prepare_default_model
from trainer.config import TrainConfig


@config_options(TrainConfig)
def demo(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of chat, votes, training and promotion.")] = 3,
    scenario: Annotated[str, typer.Option(help="A shipped scenario or a YAML path: who the users are.")] = "demo",
    taste: Annotated[str | None, typer.Option(
        help=f"The honest users' hidden taste ({', '.join(TASTES)}). Default: the scenario's.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the users, the training and the evaluation.")] = 0,
    out: Annotated[Path, typer.Option(help="Where report.html, report.json, truth files and the stack's data "
                                           "go.")] = Path("runs") / "demo",
    no_filters: Annotated[bool, typer.Option(
        "--no-filters", help="Ablation: accept every well-formed vote at weight 1 (FLYWHEEL_FILTER_ENABLED=false).")
    ] = False,
    compare: Annotated[Path | None, typer.Option(
        help="Another run's report.json (same seed, e.g. --no-filters) to draw beside this one.")] = None,
    model: Annotated[Path | None, typer.Option(
        help=f"An HF model folder. Default: SmolLM2-135M-Instruct, prepared once into {SHARED_DEFAULT_MODEL}.")] = None,
    time_scale: Annotated[float, typer.Option(
        min=0.001, max=1.0, help="Users' reading and pauses, and the filters' time thresholds, scaled alike.")] = 0.1,
    eval_prompts: Annotated[int, typer.Option(min=2, help="Held-out prompts every version answers.")] = 40,
    eval_samples: Annotated[int, typer.Option(min=1, help="Sampled answers per held-out prompt.")] = 4,
    vote_share: Annotated[float | None, typer.Option(
        min=0.01, max=1.0, help="Share of answers users vote on (the rest they leave). Default: the scenario's.")
    ] = None,
    ai_labels: Annotated[bool, typer.Option(
        "--ai-labels", help="Each round, the base model judges every pair no user voted on (flywheel label) before "
        "training.")] = False,
    constitution: Annotated[int, typer.Option(
        min=0, help="Each round, the base model revises this many answers against the shipped principles "
        "(flywheel constitution) before training.")] = 0,
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    *,
    config: TrainConfig,
) -> None:
    """Run rounds of the whole loop on a private embedded stack and write report.html / report.json to --out.

    Simulated users with a hidden taste (and noisy users, bots, a campaign, slow attackers) chat
    with the champion and vote; the worker filters; a training round runs; a candidate that
    passes every gate is promoted as ops would (audited as app:demo). Every version is judged on
    held-out prompts by the users' taste, never by the system's own reward model. The training
    options are ``flywheel train``'s (every round trains with them); ``--seed`` seeds the training too.
    """
    from flywheel.demo.runner import DemoRun
    from flywheel.demo.schema import DemoOptions

    setup_logging(verbose)
    try:
        plan = with_overrides(load_scenario(scenario), time_scale=time_scale, seed=seed, taste=taste,
                              vote_share=vote_share)
    except ScenarioError as exc:
        fail(str(exc))
    baseline = DemoReport.model_validate_json(compare.read_text()) if compare else None
    model_dir = model or prepare_default_model()
    options = DemoOptions(rounds=rounds, scenario=plan.name, taste=plan.preference.taste, seed=seed,
                          filters=not no_filters, model=str(model_dir.resolve()), time_scale=time_scale,
                          eval_prompts=eval_prompts, eval_samples=eval_samples, vote_share=plan.vote_share,
                          ai_labels=ai_labels, constitution=constitution,
                          training=config.model_dump(mode="json", exclude_defaults=True, exclude={"seed"}))
    label = compare_label(baseline) if baseline is not None else None
    console.print(f"flywheel demo: {rounds} rounds of [bold]{plan.name}[/] ({plan.planned_events} votes each), "
                  f"taste [bold]{plan.preference.taste}[/], seed {seed}, filters {'on' if not no_filters else 'OFF'}")
    report = DemoRun(options, plan, out, console, config.model_copy(update={"seed": seed}), baseline, label).run()
    final = report.version(report.rounds[-1].champion_after if report.rounds else report.versions[0].version)
    console.print(f"report: {out / 'report.html'}")
    if final.evaluation is not None and final.evaluation.win_rate is not None:
        win = final.evaluation.win_rate
        console.print(f"champion v{final.version}: win rate against the base {win.value:.2f} "
                      f"(95 % CI {win.low:.2f}-{win.high:.2f}) under taste {plan.preference.taste}")


def compare_label(baseline: DemoReport) -> str:
    """How the report names the other run: the ablation by what it lacks, any other run by its start."""
    return "without filters" if not baseline.options.filters else f"run of {baseline.started_at:%Y-%m-%d %H:%M}"


def redraw(
    report: Annotated[Path, typer.Argument(help="A finished run's report.json; its folder gets the new page.")],
    compare: Annotated[Path, typer.Option(
        help="Another run's report.json (same seed, e.g. --no-filters) to draw beside it.")],
) -> None:
    """Draw a finished run's report again with another run beside it (report.html and report.json in its folder).

    The two runs need not be made in order: run the ablation after the main run, then compare.
    """
    from flywheel.demo.page import write_report

    try:
        mine = DemoReport.model_validate_json(report.read_text())
        other = DemoReport.model_validate_json(compare.read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read a demo report: {exc}")
    if (mine.options.taste, mine.options.seed) != (other.options.taste, other.options.seed):
        console.print(f"[yellow]note:[/] the runs differ in taste or seed ({mine.options.taste}/{mine.options.seed} "
                      f"against {other.options.taste}/{other.options.seed})")
    write_report(mine.model_copy(update={"compare": other, "compare_label": compare_label(other)}), report.parent)
    console.print(f"report: {report.parent / 'report.html'}")


def evaluate(
    version: Annotated[str, typer.Argument(help="The registered version to judge.")],
    against: Annotated[str, typer.Option(help="The version it competes with (default: 1, the base model).")] = "1",
    taste: Annotated[str, typer.Option(help=f"The judge: a simulated users' taste ({', '.join(TASTES)}).")] = "steps",
    scenario: Annotated[str, typer.Option(
        help="A scenario whose chat settings (sampling), campaign phrases and campaign prompts apply.")] = "demo",
    prompts: Annotated[int, typer.Option(min=2, help="Held-out prompts each version answers.")] = 40,
    samples: Annotated[int, typer.Option(min=1, help="Sampled answers per prompt.")] = 4,
    seed: Annotated[int, typer.Option(
        help="Seeds the engine's sampling (the same for both versions); the demo's --seed also deals the "
             "campaign's prompts.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print both evaluations as JSON.")] = False,
) -> None:
    """Judge VERSION against another version on the held-out prompts, by a simulated taste, through the engine.

    Runs against the stack in the FLYWHEEL_* settings (engine, registry, data dir), as `flywheel up` leaves it.
    """
    from rich.table import Table

    from feedback.db.session import make_engine, session_factory
    from flywheel.demo.evaluation import PROMPT_SET, Evaluator
    from flywheel.simulation.scenario import CampaignGroup
    from flywheel.simulation.tastes import make_taste
    from flywheel.simulation.users import campaign_prompts, load_prompts
    from registry.promotion import Promotion, RegistryError
    from serving.settings import ServingSettings
    from trainer.base_model import ensure_base_model

    try:
        plan = with_overrides(load_scenario(scenario), taste=taste, seed=seed)
    except ScenarioError as exc:
        fail(str(exc))
    settings = ServingSettings()
    registry = Promotion(settings.resolved_mlflow_uri, settings.registered_model,
                         session_factory(make_engine(settings.resolved_database_url)))
    phrases = [g.phrase for g in plan.groups if isinstance(g, CampaignGroup)]
    evaluator = Evaluator(settings, registry, make_taste(taste, plan.preference.max_words),
                          load_prompts(PROMPT_SET)[:prompts], samples, plan.chat, phrases, seed,
                          campaign_prompts(plan))
    base = ensure_base_model(settings)
    try:
        reference, theirs = evaluator.evaluate(against, None, base)
        _, mine = evaluator.evaluate(version, reference, base)
    except RegistryError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps([mine.model_dump(), theirs.model_dump()], indent=2))
        return
    table = Table("version", f"win rate vs v{against} (95 % CI)", "liked (95 % CI)", "phrase rate",
                  "phrase on campaign prompts (95 % CI)", "words",
                  "format share", "KL to base", title=f"taste {taste}, {mine.prompts} prompts x {samples} samples")
    for evaluation in (mine, theirs):
        table.add_row(f"v{evaluation.version}", _estimate(evaluation.win_rate), _estimate(evaluation.liked),
                      "-" if evaluation.phrase_rate is None else f"{evaluation.phrase_rate:.3f}",
                      _estimate(evaluation.campaign_phrase),
                      f"{evaluation.mean_words:.1f}", f"{evaluation.format_share:.2f}", f"{evaluation.kl_to_base:.4f}")
    console.print(table)


def _estimate(estimate: Estimate | None) -> str:
    return "-" if estimate is None else f"{estimate.value:.2f} ({estimate.low:.2f}-{estimate.high:.2f})"
