"""Errors as envelopes: every failure, Flask's own 404/405 included, answers in JSON.

The layers below raise their own errors and know nothing of HTTP; :data:`DOMAIN_ERRORS` is the one
place where each becomes an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Flask, g
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, InternalServerError

from tagifai_api.ml.versions import InvalidVersionError, UnknownVersionError
from tagifai_api.serving.batcher import BatchFailedError, ClosedError, DeadlineError, QueueFullError
from tagifai_api.serving.service import ModelUnavailableError, SwitchRefusedError, VersionLoadError
from tagifai_api.store.database import StoreUnavailableError
from tagifai_api.store.jobs import JobRunningError
from tagifai_api.store.registry import RegistryConflictError, VerificationError
from tagifai_api.web.responses import construct_response

log = logging.getLogger("tagifai_api.errors")

#: clearer sentences than Werkzeug's default descriptions, which speak of browsers and servers
MESSAGES = {
    400: "The request body is not valid JSON.",
    404: "No such route. See /docs for the API.",
    405: "This route does not accept that method.",
    413: "The request body is larger than this service accepts.",
    415: "The request body must be JSON, sent with 'Content-Type: application/json'.",
    500: "Internal server error. Quote the request id when reporting it.",
}


class TagifaiError(Exception):
    """Base of the errors this service raises on purpose, each with its HTTP status."""

    status = 500
    message = "Internal server error."

    def __init__(self, message: str | None = None, data: dict | None = None, headers: dict | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.data = data
        self.headers = headers


class NotFoundError(TagifaiError):
    """A named resource (an arg, a performance filter) does not exist."""

    status = 404
    message = "Not found."


class ConflictError(TagifaiError):
    """The request cannot be done in the current state (a model version that cannot be loaded)."""

    status = 409
    message = "Conflict."


class ModelNotReadyError(TagifaiError):
    """No model is loaded in this worker yet."""

    status = 503
    message = "The model is not loaded yet; try again shortly."


class OverloadedError(TagifaiError):
    """The worker's queue is full: refused at once rather than queued without bound."""

    status = 503
    message = "The service is at capacity; retry after a moment."


class DeadlineExceededError(TagifaiError):
    """The request waited in the queue past its deadline and was not run."""

    status = 504
    message = "The prediction waited too long in the queue and was not run; retry later."


class InferenceError(TagifaiError):
    """The model failed on a batch this request was part of."""

    status = 500
    message = "Inference failed. Quote the request id when reporting it."


class StoreDownError(TagifaiError):
    """A change that needs the state store while it cannot be reached; nothing changed."""

    status = 503
    message = "The state store is unavailable, so nothing changed; retry shortly."


_RETRY_AFTER = {"Retry-After": "1"}

#: every error of the layers below that a client can meet, as the answer it gets (the most specific
#: class wins, as Flask picks handlers along the exception's class hierarchy)
DOMAIN_ERRORS: dict[type[Exception], Callable[[Exception], TagifaiError]] = {
    ModelUnavailableError: lambda e: ModelNotReadyError(f"The model is not loaded: {e}"),
    UnknownVersionError: lambda e: NotFoundError(
        f"Unknown model version {e.version!r}. Valid versions: {', '.join(e.valid) or 'none'}.",
        data={"valid": e.valid}),
    VersionLoadError: lambda e: ConflictError(f"Model version {e.version!r} cannot be loaded: {e.reason}",
                                              data={"version": e.version, "reason": e.reason}),
    InvalidVersionError: lambda e: ConflictError(
        f"Model version {e.version!r} is not valid: {e.reason}",
        data={"version": e.version, "valid": False, "reason": e.reason,
              **({"fallback": e.fallback} if getattr(e, "fallback", None) else {})}),
    VerificationError: lambda e: ConflictError(f"Nothing changed: the version failed verification: {e}",
                                               data={"reason": str(e)}),
    RegistryConflictError: lambda e: ConflictError(f"Nothing changed: {e}."),
    JobRunningError: lambda e: ConflictError(f"Nothing started: {e}.", data={"job": e.job}),
    StoreUnavailableError: lambda e: StoreDownError(data={"reason": str(e)}, headers=_RETRY_AFTER),
    SwitchRefusedError: lambda e: ConflictError(str(e)),
    QueueFullError: lambda e: OverloadedError(headers=_RETRY_AFTER),
    DeadlineError: lambda e: DeadlineExceededError(),
    BatchFailedError: lambda e: InferenceError(),
    ClosedError: lambda e: InferenceError(),
}


def _on_tagifai_error(exc: TagifaiError):
    g.error_type = type(exc).__name__
    if exc.status >= 500:
        log.warning("%s: %s", type(exc).__name__, exc.message, extra={"error_type": type(exc).__name__})
    return construct_response(exc.status, data=exc.data, message=exc.message, headers=exc.headers)


def _on_validation_error(exc: ValidationError):
    g.error_type = "ValidationError"
    return construct_response(422, data={"errors": exc.messages}, message="The request body is not valid.")


def _on_http_exception(exc: HTTPException):
    if isinstance(exc, InternalServerError):
        original = getattr(exc, "original_exception", None) or exc
        log.error(
            "unhandled %s", type(original).__name__, exc_info=original,
            extra={"error_type": type(original).__name__, "request_id": g.get("request_id")},
        )
    status = exc.code or 500
    g.error_type = type(exc).__name__
    headers = {k: v for k, v in exc.get_headers() if k.lower() not in {"content-type", "content-length"}}
    return construct_response(status, message=MESSAGES.get(status, exc.description), headers=headers or None)


def register_error_handlers(app: Flask) -> None:
    """Register at app level, so routing errors (which skip blueprint handlers) are caught too."""
    app.register_error_handler(TagifaiError, _on_tagifai_error)
    for domain_error, answer in DOMAIN_ERRORS.items():
        app.register_error_handler(domain_error, lambda exc, answer=answer: _on_tagifai_error(answer(exc)))
    app.register_error_handler(ValidationError, _on_validation_error)
    app.register_error_handler(HTTPException, _on_http_exception)
    # Flask logs an unhandled exception before the 500 handler runs, which logs it again with the
    # request id: keep only the second
    app.log_exception = lambda exc_info: None
