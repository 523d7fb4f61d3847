"""Each filter's verdicts through ``store_batch``: accepted and quarantined cases, with reasons and evidence."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import BatchAlert, Feedback, FlaggedRater, Quarantine, RewardScore
from feedback.db.session import transaction
from feedback.events import ChatMessage, Event, utcnow
from feedback.filters import Pipeline
from feedback.filters.campaigns import binomial_tail, features
from feedback.filters.reward_scores import StoredRewardScores
from tests.conftest import EventBuilder
from tests.feedback.filtering import after, campaign_traffic, filter_settings, store, verdicts


def quarantine_row(sessions: sessionmaker[Session], event_id: str) -> Quarantine:
    with sessions() as session:
        row = session.scalar(select(Quarantine).where(Quarantine.event_id == event_id))
    assert row is not None
    return row


def test_integrity_timing_and_contract(sessions: sessionmaker[Session], app_id: int, build: EventBuilder,
                                       make_app: Callable[[str], int], db_url: str) -> None:
    pipeline = Pipeline(filter_settings(integrity_max_age_s=5400))
    other_app = make_app(db_url)
    answer = build.completion(app_id, answer="x" * 1000)  # needs 1 s + 1000 ms to read
    a, b = build.pair(app_id)
    good = build.thumbs(app_id, answer.response_id, user_id="slow", **after(answer, 2.5))
    fast = build.thumbs(app_id, answer.response_id, user_id="fast", **after(answer, 1.5))
    pair_fast = build.pairwise(app_id, a.pair_id or "", user_id="fast", **after(a, 1.005))  # 2 x "Paris."
    foreign = build.thumbs(other_app, answer.response_id, user_id="f", **after(answer, 5))
    old = build.completion(app_id, created_at=utcnow() - timedelta(hours=2))
    stale = build.thumbs(app_id, old.response_id, user_id="late")
    future = build.thumbs(app_id, answer.response_id, user_id="future", created_at=utcnow() + timedelta(hours=1))
    unknown = build.thumbs(app_id, build.completion(app_id).response_id, user_id="u")
    store(sessions, pipeline, [answer, a, b, old, good, fast, pair_fast, foreign, stale, future, unknown])

    got = verdicts(sessions)
    assert got[good.event_id] == []
    assert got[fast.event_id] == ["too_fast"]
    assert got[pair_fast.event_id] == ["too_fast"]
    assert got[foreign.event_id] == ["app_mismatch"]
    assert got[stale.event_id] == ["expired"]
    assert got[future.event_id] == ["contract"]
    assert got[unknown.event_id] == ["unknown_response"]
    evidence = quarantine_row(sessions, fast.event_id).evidence["too_fast"]
    assert evidence == {"time_to_vote_ms": 1500.0, "min_read_ms": 2000.0}
    assert quarantine_row(sessions, pair_fast.event_id).evidence["too_fast"]["min_read_ms"] == 1012.0


def test_one_vote_per_user_per_target_first_wins(sessions: sessionmaker[Session], app_id: int,
                                                 build: EventBuilder) -> None:
    pipeline = Pipeline(filter_settings())
    answer = build.completion(app_id)
    first = build.thumbs(app_id, answer.response_id, rating="up", **after(answer, 5))
    flip = build.thumbs(app_id, answer.response_id, rating="down", **after(answer, 6))
    someone_else = build.thumbs(app_id, answer.response_id, user_id="u2", **after(answer, 7))
    result = store(sessions, pipeline, [answer, first, flip, someone_else, first])
    again = store(sessions, pipeline, [first, flip])

    assert (result.accepted, result.quarantined, result.duplicates, again.duplicates) == (2, 1, 1, 2)
    assert verdicts(sessions)[flip.event_id] == ["duplicate_vote"]
    assert quarantine_row(sessions, flip.event_id).evidence == {
        "duplicate_vote": {"target": answer.response_id, "first_event_id": first.event_id}
    }


def test_velocity_per_user_and_per_app(sessions: sessionmaker[Session], app_id: int, build: EventBuilder) -> None:
    pipeline = Pipeline(filter_settings(velocity_user_max=3, velocity_user_window_s=60, velocity_app_max=5))
    answers = [build.completion(app_id) for _ in range(6)]
    busy = [build.thumbs(app_id, c.response_id, user_id="busy", **after(c, 5 + i)) for i, c in enumerate(answers[:4])]
    later = build.thumbs(app_id, answers[4].response_id, user_id="busy", **after(answers[4], 5 + 61))
    crowd = [build.thumbs(app_id, c.response_id, user_id=f"u{i}", **after(c, 10)) for i, c in enumerate(answers[4:])]
    store(sessions, pipeline, [*answers, *busy, later, *crowd])

    got = verdicts(sessions)
    assert [got[e.event_id] for e in busy] == [[], [], [], ["user_rate"]]
    assert got[later.event_id] == []  # the window moved on
    assert [got[e.event_id] for e in crowd] == [[], ["app_rate"]]  # busy 4 + later + u0 = 6th in the app's window


def test_batch_alert_on_a_flood_of_one_label(sessions: sessionmaker[Session], app_id: int, build: EventBuilder) -> None:
    pipeline = Pipeline(filter_settings(contract_min_batch=10, contract_max_label_share=0.8))
    answers = [build.completion(app_id) for _ in range(12)]
    votes = [build.thumbs(app_id, c.response_id, user_id=f"u{i}", **after(c, 5)) for i, c in enumerate(answers)]
    store(sessions, pipeline, [*answers, *votes])
    with sessions() as session:
        [alert] = session.scalars(select(BatchAlert))
    assert alert.check == "expect_column_mean_to_be_between:is_top_label"
    assert (alert.detail["label"], alert.detail["observed_value"], alert.batch["events"]) == ("up", 1.0, 12)
    assert all(v == [] for v in verdicts(sessions).values())  # an alert, not a verdict


def test_bot_is_flagged_and_its_earlier_votes_move_to_quarantine(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    pipeline = Pipeline(filter_settings(bot_min_votes=6, bot_min_comments=3))
    answers = [build.completion(app_id) for _ in range(8)]
    first = [build.thumbs(app_id, c.response_id, user_id="bot", **after(c, 5)) for c in answers[:3]]
    rest = [build.thumbs(app_id, c.response_id, user_id="bot", **after(c, 6)) for c in answers[3:]]
    honest = [build.thumbs(app_id, c.response_id, user_id="h", rating="up" if i % 2 else "down",
                           comment="great" if i % 3 else "meh", **after(c, 7)) for i, c in enumerate(answers)]
    spam = [build.thumbs(app_id, c.response_id, user_id="spam", rating="up" if i % 2 else "down",
                         comment="Nice  answer!", **after(c, 8)) for i, c in enumerate(answers[:3])]
    store(sessions, pipeline, [*answers, *first])
    assert all(verdicts(sessions)[e.event_id] == [] for e in first)  # too little history yet
    store(sessions, pipeline, [*rest, *honest, *spam])

    got = verdicts(sessions)
    assert all(got[e.event_id] == ["bot_pattern"] for e in first + rest)
    assert all(got[e.event_id] == ["bot_pattern"] for e in spam)
    assert all(got[e.event_id] == [] for e in honest)
    moved = quarantine_row(sessions, first[0].event_id).evidence["bot_pattern"]
    assert moved["retroactive"] and moved["labels"] == {"thumbs": "up"} and moved["votes"] == 8
    with sessions() as session:
        flags = {(f.user_id, f.evidence["pattern"]) for f in session.scalars(select(FlaggedRater))}
    assert flags == {("bot", "same_label"), ("spam", "same_comment")}
    late = build.thumbs(app_id, build.completion(app_id).response_id, user_id="bot", rating="down")
    store(sessions, pipeline, [late])
    assert "bot_pattern" in verdicts(sessions)[late.event_id]


def test_reliability_weights_raters_by_agreement(sessions: sessionmaker[Session], app_id: int,
                                                 build: EventBuilder) -> None:
    """Three raters agree on the truth, a coin flipper gets a low weight, a contrarian is quarantined."""
    pipeline = Pipeline(filter_settings(reliability_min_items=8, bot_min_votes=1000))
    for i in range(16):
        batch: list[Event] = []
        a, b = build.pair(app_id)
        truth = "a" if i % 3 else "b"
        batch += [a, b]
        choices = {"h1": truth, "h2": truth, "h3": truth, "coin": "ab"[(i * 7 + i // 2) % 2],
                   "contra": "b" if truth == "a" else "a"}
        batch += [build.pairwise(app_id, a.pair_id or "", user_id=u, choice=c, **after(a, 5))
                  for u, c in choices.items()]
        store(sessions, pipeline, batch)

    weights = pipeline.state.weights
    assert weights[(app_id, "h1")] == 1.0
    assert weights[(app_id, "coin")] < 0.5
    got = verdicts(sessions)
    with sessions() as session:
        rows = {f.user_id: f.weight for f in session.scalars(select(Feedback))}
        contra = session.scalars(select(Quarantine).where(Quarantine.user_id == "contra")).all()
    assert rows["h1"] == 1.0 and rows["coin"] == weights[(app_id, "coin")]
    assert contra and all(q.reasons == ["unreliable"] for q in contra)  # once the evidence sufficed
    assert {e for e, v in got.items() if v} == {q.event_id for q in contra}


def test_reward_model_scores_judge_raters_who_share_no_answers(sessions: sessionmaker[Session], app_id: int,
                                                              build: EventBuilder) -> None:
    """Everyone rates only the answers they were served, so people share no items and reliability has nothing
    to go on. The scores a training round stores make every scored answer an item shared with the reward model,
    if that model is accurate enough to be heard (80 %): then the rater who votes against it loses their weight
    and their next votes are quarantined as unreliable, while the raters who agree with it keep 1.0."""
    # The consensus, which reads the scores too, would condemn the contrarian for good: reliability alone here.
    settings = filter_settings(bot_min_votes=1000, velocity_user_max=1000, reliability_min_items=8,
                               consensus_min_votes=1000)
    pipeline = Pipeline(settings, StoredRewardScores(sessions))
    users = ["h0", "h1", "h2", "contra"]
    served = {user: [build.completion(app_id, answer=f"answer {user} {i}") for i in range(24)] for user in users}
    answers = [c for user in users for c in served[user]]
    good = {c.response_id for c in answers[::2]}

    def votes(rounds: range) -> list[Event]:
        return [build.thumbs(app_id, c.response_id, user_id=user, rating="up" if (c.response_id in good) != (
            user == "contra") else "down", **after(c, 30)) for user in users for c in (served[user][i] for i in rounds)]

    def scored_by_trainer(run_id: str, accuracy: float) -> None:  # as trainer/reward_scores.py writes them
        with transaction(sessions) as session:
            session.execute(delete(RewardScore))
            session.add_all(RewardScore(response_id=c.response_id, score=1.0 if c.response_id in good else -1.0,
                                        run_id=run_id, model_accuracy=accuracy) for c in answers)

    store(sessions, pipeline, answers + votes(range(8)))
    scored_by_trainer("weak", 0.6)
    store(sessions, pipeline, votes(range(8, 12)))
    assert pipeline.state.weights.get((app_id, "contra"), 1.0) == 1.0  # no shared items, a weak judge unheard
    scored_by_trainer("good", 0.9)
    store(sessions, pipeline, votes(range(12, 16)))
    later = votes(range(16, 24))
    store(sessions, pipeline, later)

    got = verdicts(sessions)
    assert not any(got[e.event_id] for e in later if e.user_id != "contra")
    assert all(got[e.event_id] == ["unreliable"] for e in later if e.user_id == "contra")
    with sessions() as session:
        weights = {f.user_id: f.weight for f in session.scalars(select(Feedback))}
    assert weights["h0"] == weights["h1"] == 1.0 and weights["contra"] == 0.05  # the floor


def test_campaign_is_found_without_being_told_the_phrase(sessions: sessionmaker[Session], app_id: int,
                                                         build: EventBuilder) -> None:
    pipeline = Pipeline(filter_settings(bot_min_votes=1000))
    completions, honest, campaign = campaign_traffic(build, app_id, "Visit https://deals.example/now with MegaCorp")
    store(sessions, pipeline, completions[:24] + honest[:70] + campaign[:30])
    store(sessions, pipeline, completions[24:] + honest[70:] + campaign[30:])

    got = verdicts(sessions)
    assert all(got[e.event_id] == ["campaign"] for e in campaign)
    assert not any(got[e.event_id] for e in honest)
    evidence = quarantine_row(sessions, campaign[0].event_id).evidence["campaign"]
    assert evidence["group_size"] == 4 and evidence["p_value"] < 1e-4
    assert any(word in evidence["feature"] for word in ("deals.example", "MegaCorp", "megacorp", "visit"))


def test_campaign_search_waits_for_its_interval_or_a_quiet_stream(sessions: sessionmaker[Session], app_id: int,
                                                                   build: EventBuilder) -> None:
    """Between two searches the campaign's votes are accepted; the next search (here: the worker's call when
    the stream goes quiet) flags the accounts and moves those votes to quarantine, so none is lost, not even
    when the worker restarts in between: the rebuilt pipeline's first search reviews every rater."""
    settings = filter_settings(bot_min_votes=1000, search_interval_s=3600)
    pipeline = Pipeline(settings)
    completions, honest, campaign = campaign_traffic(build, app_id, "Visit https://deals.example/now with MegaCorp")
    store(sessions, pipeline, completions + honest)  # the first batch is searched at once
    store(sessions, pipeline, campaign)  # within the interval: not searched

    assert not any(verdicts(sessions)[e.event_id] for e in campaign)
    with transaction(sessions) as session:
        pipeline = Pipeline.rebuild(session, settings)  # a restart
    with transaction(sessions) as session:
        assert pipeline.catch_up(session)
    got = verdicts(sessions)
    assert all(got[e.event_id] == ["campaign"] for e in campaign)
    assert not any(got[e.event_id] for e in honest)
    assert quarantine_row(sessions, campaign[-1].event_id).evidence["campaign"]["retroactive"]
    with transaction(sessions) as session:
        assert not pipeline.catch_up(session)  # nobody voted since


def test_features_and_binomial_tail() -> None:
    found = features("Try MegaCorp today at https://x.example/a, said Ada Lovelace.")
    assert {"link:https://x.example/a", "name:MegaCorp", "name:Ada Lovelace", "text:try megacorp"} <= found
    assert binomial_tail(0, 10, 0.3) == 1.0
    assert binomial_tail(10, 10, 0.5) == pytest.approx(0.5**10)
    assert binomial_tail(3, 4, 0.5) == pytest.approx(5 / 16)


def test_rebuilt_pipeline_judges_like_the_running_one(sessions: sessionmaker[Session], app_id: int,
                                                      build: EventBuilder) -> None:
    settings = filter_settings(bot_min_votes=4, velocity_user_max=6)
    running = Pipeline(settings)
    answers = [build.completion(app_id) for _ in range(6)]
    bot = [build.thumbs(app_id, c.response_id, user_id="bot", **after(c, 5)) for c in answers[:4]]
    voter = build.thumbs(app_id, answers[5].response_id, user_id="v", **after(answers[5], 5))
    store(sessions, running, [*answers, *bot, voter])

    with transaction(sessions) as session:
        rebuilt = Pipeline.rebuild(session, settings)
    assert rebuilt.state.flags == running.state.flags
    assert rebuilt.state.first_vote == running.state.first_vote
    assert rebuilt.state.user_times == running.state.user_times
    again = build.thumbs(app_id, answers[5].response_id, user_id="v", **after(answers[5], 9))
    bot_again = build.thumbs(app_id, answers[4].response_id, user_id="bot", rating="down", **after(answers[4], 9))
    store(sessions, rebuilt, [again, bot_again])
    got = verdicts(sessions)
    assert got[again.event_id] == ["duplicate_vote"]
    assert got[bot_again.event_id] == ["bot_pattern"]


def test_contract_suite_is_built_once(app_id: int) -> None:
    pipeline = Pipeline(filter_settings())
    assert pipeline.suite.build() is Pipeline(filter_settings()).suite.build()


def test_bot_answering_up_and_a_is_judged_per_kind_of_vote(sessions: sessionmaker[Session], app_id: int,
                                                           build: EventBuilder) -> None:
    """Always "up" to single answers and always "A" to pairs: two labels overall, no information in either."""
    pipeline = Pipeline(filter_settings(bot_min_votes=8))
    events: list[Event] = []
    for i in range(6):
        answer, (a, b) = build.completion(app_id), build.pair(app_id)
        events += [answer, a, b,
                   build.thumbs(app_id, answer.response_id, user_id="bot", **after(answer, 5)),
                   build.pairwise(app_id, a.pair_id or "", user_id="bot", **after(a, 5)),
                   build.thumbs(app_id, answer.response_id, user_id="h", rating="up" if i % 3 else "down",
                                **after(answer, 6)),
                   build.pairwise(app_id, a.pair_id or "", user_id="h", choice="ab"[i % 2], **after(a, 6))]
    store(sessions, pipeline, events)

    got = verdicts(sessions)
    bot = [e for e in events if getattr(e, "user_id", None) == "bot" and e.type != "completion"]
    assert all(got[e.event_id] == ["bot_pattern"] for e in bot)
    assert not any(v for e, v in got.items() if e not in {b.event_id for b in bot})
    evidence = quarantine_row(sessions, bot[0].event_id).evidence["bot_pattern"]
    assert evidence["labels"] == {"pairwise": "a", "thumbs": "up"} and evidence["share"] == 1.0


def test_campaign_of_small_accounts_is_found_as_a_cohort(sessions: sessionmaker[Session], app_id: int,
                                                         build: EventBuilder) -> None:
    """Ten accounts with six votes each, all on the same three scripted prompts, upvote the answers that
    carry a phrase and downvote the rest. No single account has the history to pass the per-account test;
    pooled as the cohort their shared prompts make them, they do, and the nine whose own endorsements carry
    the phrase are flagged; the one whose answers never carried it endorsed nothing, but nine in ten of its
    cohort are the campaign, so it rides with them (``rider``). Honest raters asking the same popular
    prompts, voting by length, are left alone."""
    pipeline = Pipeline(filter_settings(bot_min_votes=1000))
    scripted = [[ChatMessage(role="user", content=f"Scripted question {n}?")] for n in range(3)]
    popular = [[ChatMessage(role="user", content=f"Popular question {n}?")] for n in range(3)]
    completions: list[Event] = []
    shills: list[Event] = []
    honest: list[Event] = []
    old = utcnow() - timedelta(hours=1)
    for account in range(10):
        for i in range(6):
            carries = account > 0 and i < 2  # on two of the three prompts, which differ between accounts
            text = f"Visit deals-{'now' if carries else 'x'} example {i}: answer {account} {'long ' * i}."
            if carries:
                text = f"Visit bestdeals example, question {i} of {account}."
            answer = build.completion(app_id, messages=scripted[(account + i) % 3], answer=text, created_at=old)
            completions.append(answer)
            shills.append(build.thumbs(app_id, answer.response_id, user_id=f"shill{account}",
                                       rating="up" if carries else "down", **after(answer, 30)))
    for rater in range(6):
        for i in range(8):
            text = f"Done {rater}{i}." if i % 2 else f"A much longer answer {rater} {i} " + "word " * 40
            answer = build.completion(app_id, messages=popular[(rater + i) % 3], answer=text, created_at=old)
            completions.append(answer)
            honest.append(build.thumbs(app_id, answer.response_id, user_id=f"honest{rater}",
                                       rating="up" if i % 2 else "down", **after(answer, 30)))
    store(sessions, pipeline, completions + shills + honest)

    got = verdicts(sessions)
    assert all(got[e.event_id] == ["campaign"] for e in shills)
    assert not any(got[e.event_id] for e in honest)
    evidence = quarantine_row(sessions, shills[6].event_id).evidence["campaign"]
    assert evidence["hits"] == 2 and evidence["group_size"] == 9 and "bestdeals" in evidence["feature"]
    assert evidence["cohort_hits"] == 18 and evidence["p_value"] < 1e-4
    rider = quarantine_row(sessions, shills[0].event_id).evidence["campaign"]
    assert rider["rider"] and rider["cohort_members"] == 9 and rider["cohort_size"] == 10


def test_campaign_cohort_riders_need_a_majority(sessions: sessionmaker[Session], app_id: int,
                                                build: EventBuilder) -> None:
    """With ``cohort_majority`` above the cohort's campaign share, the account without hits is left alone."""
    pipeline = Pipeline(filter_settings(bot_min_votes=1000, campaign_cohort_majority=0.95))
    scripted = [[ChatMessage(role="user", content=f"Scripted question {n}?")] for n in range(3)]
    old = utcnow() - timedelta(hours=1)
    events: list[Event] = []
    shills: list[Event] = []
    for account in range(10):
        for i in range(6):
            carries = account > 0 and i < 2
            text = (f"Visit bestdeals example, question {i} of {account}." if carries
                    else f"Visit deals-x example {i}: answer {account} {'long ' * i}.")
            answer = build.completion(app_id, messages=scripted[(account + i) % 3], answer=text, created_at=old)
            shills.append(build.thumbs(app_id, answer.response_id, user_id=f"shill{account}",
                                       rating="up" if carries else "down", **after(answer, 30)))
            events.append(answer)
    store(sessions, pipeline, events + shills)
    got = verdicts(sessions)
    assert all(got[e.event_id] == ["campaign"] for e in shills[6:])
    assert not any(got[e.event_id] for e in shills[:6])


def test_time_scale_scales_the_time_thresholds() -> None:
    """A simulation waiting a tenth of human time is judged by a tenth of the human thresholds."""
    pipeline = Pipeline(filter_settings(time_scale=0.1, simulation=True, timing_min_ms=1000, timing_ms_per_char=10,
                                        velocity_user_window_s=60, velocity_app_window_s=120))
    timing = next(f for f in pipeline.filters if f.name == "timing")
    velocity = next(f for f in pipeline.filters if f.name == "velocity")
    assert (timing.min_ms, timing.ms_per_char) == (100, 1)  # type: ignore[attr-defined]
    assert (velocity.user_window_s, velocity.app_window_s) == (6, 12)  # type: ignore[attr-defined]
