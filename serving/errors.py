"""One error model: every error the gateway answers is OpenAI's envelope, ``{"error": {message, type, code}}``.

The official ``openai`` client raises its usual exceptions with our message in them. The
same envelope answers unknown routes (not FastAPI's ``{"detail"}``), invalid bodies (400, not
422), the gateway's own failures (engine, broker, registry) and anything unexpected (500);
a stream whose status line is already sent carries it in-band. ``responses`` declares the
statuses a route really answers in the OpenAPI document; the ``default`` entry stands for
the unexpected 500 and keeps FastAPI from listing a 422 that never happens.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from feedback.producer import BrokerUnavailable
from registry.promotion import RegistryError
from serving.champion import NoChampion
from serving.engine import EngineError
from serving.protocol import ErrorBody, ErrorResponse
from serving.ratelimit import RateLimited

RETRY_AFTER_SECONDS = 2
"""What a 503 tells the client to wait: the producer reconnects and the champion loads within seconds."""

_KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error", 429: "rate_limit_error",
          500: "api_error",
          502: "engine_error", 503: "service_unavailable"}
_MEANING = {
    400: "Invalid request: the message names the field and the problem.",
    401: "Missing, invalid or revoked API key.",
    403: "The key is not allowed here (admin routes need an admin key).",
    404: "No such thing (model, event, version or route).",
    409: "Conflicts with the current state (registry, quarantine).",
    429: "This app is over its rate limit (FLYWHEEL_RATE_LIMIT_PER_S); retry after Retry-After seconds.",
    502: "The engine failed the request.",
    503: "A dependency is down (broker, engine, no champion yet); retry after Retry-After seconds.",
}


def envelope(status: int, message: str, kind: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=ErrorBody(message=message, type=kind or _KINDS.get(status, "api_error"), code=status))


def _invalid(exc: RequestValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {err['msg']}" for err in exc.errors()
    )


def error_for(exc: BaseException) -> tuple[int, ErrorResponse]:
    """The status and envelope of an exception: the gateway's own errors by type, anything else a 500."""
    if isinstance(exc, HTTPException):
        return exc.status_code, envelope(exc.status_code, str(exc.detail))
    if isinstance(exc, RequestValidationError):
        return 400, envelope(400, _invalid(exc))
    if isinstance(exc, EngineError):
        return exc.status, envelope(exc.status, str(exc))
    if isinstance(exc, BrokerUnavailable):
        return 503, envelope(503, f"could not record the event, nothing was accepted: {exc}")
    if isinstance(exc, RegistryError):
        return 409, envelope(409, str(exc))
    if isinstance(exc, RateLimited):
        return 429, envelope(429, str(exc))
    if isinstance(exc, NoChampion):
        return 503, envelope(503, str(exc))
    return 500, envelope(500, f"internal error ({type(exc).__name__}); it is logged on the gateway")


async def _answer(_request: Request, exc: Exception) -> JSONResponse:
    status, body = error_for(exc)
    headers = dict(getattr(exc, "headers", None) or {})
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in the envelope. ``Exception`` covers the unexpected: Starlette answers with this
    handler, then re-raises so that the server logs the traceback."""
    for kind in (HTTPException, RequestValidationError, EngineError, BrokerUnavailable, RegistryError, NoChampion,
                 RateLimited, Exception):
        app.add_exception_handler(kind, _answer)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers, plus ``default`` for an unexpected 500."""
    declared: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": _MEANING[status]} for status in statuses
    }
    declared["default"] = {"model": ErrorResponse, "description": "An unexpected error (500), in the same envelope."}
    return declared
