"""``FLYWHEEL_FILTER_ENABLED=false`` (the demo's ``--no-filters`` ablation): only the data's own checks remain."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from feedback.db.models import Feedback
from feedback.filters import Pipeline
from tests.conftest import EventBuilder
from tests.feedback.filtering import after, campaign_traffic, filter_settings, store, verdicts


def test_without_filters_attacks_pass_at_weight_one_but_bad_data_does_not(
    sessions: sessionmaker[Session], app_id: int, build: EventBuilder
) -> None:
    completions, honest, campaign = campaign_traffic(build, app_id, "Visit https://deals.example/now with MegaCorp")
    answer = completions[0]
    fast = build.thumbs(app_id, answer.response_id, user_id="fast", **after(answer, 0.01))
    twice = build.thumbs(app_id, answer.response_id, user_id="honest0", rating="down", **after(answer, 999))
    unknown = build.thumbs(app_id, build.completion(app_id).response_id, user_id="u")
    batch = completions + honest + campaign + [fast, twice, unknown]

    store(sessions, Pipeline(filter_settings(enabled=False)), batch)
    got = verdicts(sessions)
    assert not any(got[e.event_id] for e in [*honest, *campaign, fast])  # too fast, a campaign: all accepted
    assert got[twice.event_id] == ["duplicate_vote"] and got[unknown.event_id] == ["unknown_response"]
    with sessions() as session:
        assert set(session.scalars(select(Feedback.weight))) == {1.0}


def test_the_same_traffic_with_filters_on_is_judged(sessions: sessionmaker[Session], app_id: int,
                                                    build: EventBuilder) -> None:
    completions, honest, campaign = campaign_traffic(build, app_id, "Visit https://deals.example/now with MegaCorp")
    fast = build.thumbs(app_id, completions[0].response_id, user_id="fast", **after(completions[0], 0.01))
    store(sessions, Pipeline(filter_settings(bot_min_votes=1000)), completions + honest + campaign + [fast])
    got = verdicts(sessions)
    assert got[fast.event_id] == ["too_fast"] and all(got[e.event_id] == ["campaign"] for e in campaign)
