"""Per-app rate limits: a token bucket per app, so one app's flood cannot crowd out the others.

Each app may send ``rate_limit_per_s`` requests a second on average and up to ``rate_limit_burst``
at once; beyond, the gateway answers 429 with ``Retry-After`` (the seconds until a request fits
again) before doing any work. The buckets live in the gateway process: with several gateways
behind a balancer each one limits its share. One event loop takes from them, so no lock is needed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` a second; a request takes one."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """Take a token and return 0, or return the seconds until one is there (taking nothing)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimited(Exception):
    """An app went over its rate: answered 429 with ``Retry-After`` (whole seconds, at least 1)."""

    def __init__(self, wait_s: float, rate: float) -> None:
        self.retry_after = max(1, math.ceil(wait_s))
        super().__init__(f"this app is over its rate limit of {rate:g} requests a second; "
                         f"retry after {self.retry_after} s")


class RateLimiter:
    """One bucket per app; ``rate`` 0 turns limiting off."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: dict[int, TokenBucket] = {}

    def check(self, app_id: int) -> None:
        """Count one request of ``app_id``; raise ``RateLimited`` if it is over its rate."""
        if self.rate <= 0:
            return
        bucket = self.buckets.get(app_id)
        if bucket is None:
            bucket = self.buckets[app_id] = TokenBucket(self.rate, self.burst)
        wait = bucket.take(time.monotonic())
        if wait:
            raise RateLimited(wait, self.rate)
