"""Browser feedback tokens: a short-lived capability for one vote, so an app's API key never leaves its server.

Every chat answer carries ``flywheel.feedback_token``, scoped to its response (a thumbs vote on
that ``response_id``) or to its pair (a pairwise vote on that ``pair_id``). The app hands it to the
browser, which sends it as ``Authorization: Bearer <token>`` to ``POST /v1/feedback``, for that one
vote and nothing else: every other route treats it as an unknown key (401).

A token is ``fwt.<payload>.<signature>``: the payload names the app, the response or pair and
the expiry; the signature is an HMAC-SHA256 under a secret only gateways hold, so nobody can
forge or widen one. The vote's event id is derived from the signature: a token can record one
event, and the worker's per-app idempotent store keeps a second delivery from counting twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException

PREFIX = "fwt."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: one vote by app ``app_id`` on ``target`` (a response or pair id)."""

    app_id: int
    target: str
    event_id: str


class FeedbackTokens:
    """Issues and verifies tokens under one secret; ``ttl_s`` is how long a token stays valid."""

    def __init__(self, secret: bytes, ttl_s: float) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, app_id: int, target: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        payload = f"{app_id}:{target}:{expires}".encode()
        return f"{PREFIX}{_b64(payload)}.{_b64(self._sign(payload))}"

    def verify(self, token: str, now: float | None = None) -> Grant:
        """The grant of a genuine, unexpired token; 401 in the envelope for anything else."""
        try:
            payload_b64, signature_b64 = token.removeprefix(PREFIX).split(".")
            payload, signature = _unb64(payload_b64), _unb64(signature_b64)
        except (ValueError, binascii.Error):
            raise HTTPException(401, "malformed feedback token") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise HTTPException(401, "invalid feedback token: its signature does not match")
        app_id, target, expires = payload.decode().split(":")
        if int(expires) < (time.time() if now is None else now):
            raise HTTPException(401, "expired feedback token: ask the app for a fresh answer to vote on")
        return Grant(int(app_id), target, event_id=f"fbt-{hashlib.sha256(signature).hexdigest()[:32]}")

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()


def is_feedback_token(credential: str) -> bool:
    return credential.startswith(PREFIX)


def load_or_create_secret(path: Path) -> bytes:
    """The secret in ``path``, created (256 random bits, readable by the owner only) if missing.

    Every gateway on the same data dir shares it; gateways on different hosts need
    ``FLYWHEEL_FEEDBACK_TOKEN_SECRET`` set alike. ``O_EXCL`` makes two gateways starting together agree.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the other creator may not have written it yet
            if secret := path.read_bytes().strip():
                return secret
            time.sleep(0.1)
        raise RuntimeError(f"the feedback token secret file {path} is empty") from None
    secret = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
    return secret
