"""Which end users a canary serves: a pure, sticky draw from the user id and the canary's version.

A user's draw is a number in [0, 1) from the SHA-256 of (canary version, user id); the user is in
the canary's share when it falls below ``percent / 100``. So:

- **sticky**: the same user gets the same side on every request and on every gateway, with no
  state to share or lose (a restart or a second gateway draws the same);
- **the share converges to P %**: the hash spreads users uniformly, so over many users the share
  in the canary is P % within binomial noise;
- **widening keeps users**: raising the percent only adds users (a user below 10 % is below 25 %),
  so nobody flips back and forth while ops widen a canary;
- **a new canary re-draws**: the version is in the hash, so the next canary's users are a fresh
  sample, not the same unlucky few every time.

Requests without a ``user`` cannot be sticky and go to the champion.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def canary_draw(user: str, canary_version: str) -> float:
    """The user's fixed draw in [0, 1) for this canary version."""
    digest = hashlib.sha256(f"flywheel.canary\x00{canary_version}\x00{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def in_canary(user: str | None, canary_version: str, percent: float) -> bool:
    """Whether ``user`` is among the ``percent`` % of end users sent to ``canary_version``."""
    if user is None or percent <= 0:
        return False
    return canary_draw(user, canary_version) * 100 < percent


def version_for(user: str | None, champion: str | None, canary: str | None, percent: float | None) -> str | None:
    """The version that answers ``user``'s single answers given the champion and canary of a moment."""
    if canary is not None and percent is not None and in_canary(user, canary, percent):
        return canary
    return champion
