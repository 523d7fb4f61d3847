"""API keys of apps and ops. A key is shown once at creation; only its SHA-256 is stored.

Keys are 256 random bits, so a fast hash is safe here (there is nothing to brute-force),
and lets the gateway verify a key on every request without a slow KDF.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from feedback.db.models import App

KEY_PREFIX = "fw_"


@dataclass(frozen=True)
class Caller:
    """The authenticated app behind a request (never carries the key itself)."""

    app_id: int
    name: str
    is_admin: bool

    @property
    def actor(self) -> str:
        """Who the audit trail names for an action over HTTP (``cli:<login>`` for the CLI)."""
        return f"app:{self.name}"


class AppExists(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_app(session: Session, name: str, admin: bool = False) -> tuple[App, str]:
    """Create an app and return it with its key; the key cannot be recovered later."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    app = App(name=name, key_hash=hash_key(key), key_prefix=key[:10], is_admin=admin)
    session.add(app)
    try:
        session.flush()
    except IntegrityError as exc:
        raise AppExists(f"an app named {name!r} already exists") from exc
    return app, key


def find_caller(session: Session, key: str) -> Caller | None:
    app = session.scalar(select(App).where(App.key_hash == hash_key(key), App.revoked_at.is_(None)))
    return None if app is None else Caller(app.id, app.name, app.is_admin)


def list_apps(session: Session) -> list[App]:
    return list(session.scalars(select(App).order_by(App.id)))
