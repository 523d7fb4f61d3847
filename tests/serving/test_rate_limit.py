"""Per-app rate limits: an app over its rate gets 429 with ``Retry-After`` in the envelope; others go on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.ratelimit import TokenBucket
from tests.serving.conftest import Gateway, gateway_settings, running_gateway
from tests.serving.test_api import envelope

BURST = 3


@pytest.fixture
def limited(db_url: str, broker: str, tmp_path: Path, mlflow_uri: str) -> Iterator[Gateway]:
    """A gateway letting each app send ``BURST`` requests at once, then one every 2 s."""
    yield from running_gateway(gateway_settings(db_url, broker, tmp_path / "data", mlflow_uri,
                                                rate_limit_per_s=0.5, rate_limit_burst=BURST))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the gateway's limiter, not the store, is under test
def test_an_app_over_its_rate_gets_429_with_retry_after(limited: Gateway) -> None:
    for _ in range(BURST):
        assert limited.get("/v1/feedback/not-sent").status_code == 404
    refused = limited.post("/v1/feedback", {"type": "thumbs", "response_id": "resp_" + "0" * 32, "rating": "up",
                                            "user_id": "u1"})
    error = envelope(refused, 429)
    assert error["type"] == "rate_limit_error" and "rate limit of 0.5 requests a second" in error["message"]
    assert refused.headers["Retry-After"] == "2"
    assert limited.get("/v1/feedback/not-sent", app="other").status_code == 404  # another app is not slowed
    for _ in range(BURST + 1):  # admin routes are not limited: ops can act while an app floods
        assert limited.get("/admin/models", app="ops").status_code == 200


def test_a_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2)
    start = bucket.updated
    assert [bucket.take(start), bucket.take(start)] == [0.0, 0.0]
    assert bucket.take(start) == pytest.approx(0.5)
    assert bucket.take(start + 0.5) == 0.0
    assert bucket.take(start + 0.5) == pytest.approx(0.5)
