"""The request check: which key a request carries, and whether the route lets it through.

See the package docstring for how views use :func:`require_role` and :func:`public`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from flask import Flask, current_app, g, request

from tagifai_api.auth.keys import PREFIX, ROLES, ApiKey, KeyRing, role_allows
from tagifai_api.auth.oidc import (ProviderUnavailableError, TokenError, TokenIdentity, Verifier, from_settings,
                                   looks_like_jwt)
from tagifai_api.store.database import Store
from tagifai_api.web.errors import TagifaiError

log = logging.getLogger("tagifai_api.auth")

EXTENSION = "tagifai_auth"
_ROLE_ATTR = "_tagifai_role"
_PUBLIC_ATTR = "_tagifai_public"
#: endpoints outside the check in mode ``all``: probes, metrics, and the docs (a browser cannot
#: attach a key to a page load, and without the page its "Authorize" button cannot be reached)
OPEN_ENDPOINTS = frozenset({"index.index", "health.live", "health.ready", "prometheus_metrics",
                            "docs.docs", "docs.static", "docs.openapi"})


class UnauthorizedError(TagifaiError):
    """No credentials, or ones the service does not accept (an unknown or revoked key, a bad token)."""

    status = 401
    message = "This route needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."

    def __init__(self, message: str | None = None, error: str | None = None):
        challenge = 'Bearer realm="tagifai"' + (f', error="{error}"' if error else "")
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class ForbiddenError(TagifaiError):
    """Valid credentials whose role is too low for the route."""

    status = 403
    message = "This API key's role may not use this route."


class ProviderDownError(TagifaiError):
    """A token arrived while the identity provider's signing keys were never fetched."""

    status = 503
    message = "The identity provider's signing keys could not be fetched yet; retry shortly."


class AuthState:
    """Per-app state: the mode, the keys in force and, where tokens are accepted, their verifier."""

    def __init__(self, mode: str, store: Store, poll_s: float, verifier: Verifier | None = None) -> None:
        self.mode = mode
        self.store = store
        self.ring = KeyRing(store, poll_s if mode != "off" else 0)
        self.verifier = verifier if mode != "off" else None


def _state() -> AuthState:
    return current_app.extensions[EXTENSION]


def _presented() -> tuple[str | None, str | None]:
    """The credential this request carries and the header it came in (``authorization`` or
    ``x-api-key``); ``(None, None)`` when there is none."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), "authorization"
    value = request.headers.get("X-API-Key", "").strip()
    return (value, "x-api-key") if value else (None, None)


def _missing_message(role: str | None) -> str:
    state = _state()
    if role == "admin" and state.verifier is None and not state.ring.has_role("admin"):
        return ("This route needs an admin API key, and none exists yet: create one with `python -m tagifai_api "
                "keys create --name NAME --role admin` and send it as 'Authorization: Bearer <key>'.")
    if state.verifier is not None:
        return ("This route needs credentials: send 'Authorization: Bearer <token>' with an access token from "
                "the identity provider, or an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
    return UnauthorizedError.message


def authenticate(role: str | None = None) -> ApiKey | TokenIdentity:
    """Who this request's credentials stand for: an API key in force, or a valid identity-provider
    token; 401 (with ``WWW-Authenticate``) when there are none or they are not accepted, 503 for a
    token while the provider's keys were never fetched. ``role`` (the route's need) only shapes the
    401's message.

    Sets ``g.api_key_name`` (a key's name or a token's subject), which the access line records;
    the credential itself is never logged.
    """
    value, source = _presented()
    if value is None:
        raise UnauthorizedError(_missing_message(role))
    state = _state()
    if not value.startswith(PREFIX) and looks_like_jwt(value):
        if source != "authorization":
            raise UnauthorizedError("An access token goes in 'Authorization: Bearer <token>', not in X-API-Key.",
                                    error="invalid_request")
        if state.verifier is None:
            raise UnauthorizedError("This service accepts API keys only, not tokens.", error="invalid_token")
        try:
            found = state.verifier.verify(value)
        except TokenError as exc:
            raise UnauthorizedError(str(exc), error="invalid_token") from None
        except ProviderUnavailableError as exc:
            raise ProviderDownError(str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    else:
        found = state.ring.lookup(value)
        if found is None:
            raise UnauthorizedError("The API key is not valid (unknown or revoked).", error="invalid_token")
    g.api_key_name = found.name
    return found


def check_role(role: str) -> ApiKey | TokenIdentity | None:
    """Let the request through only with credentials of ``role`` or stronger (unless the mode is ``off``).

    401 without valid credentials (also while no key of ``role`` exists: the message then says how
    to create one), 403 only for valid credentials whose role is too low.
    """
    state = _state()
    if state.mode == "off":
        return None
    who = g.get("api_key") or authenticate(role)
    g.api_key = who
    if who.role is None or not role_allows(who.role, role):
        what = f"the key '{who.name}'" if isinstance(who, ApiKey) else f"the token of '{who.name}'"
        has = f"has the {who.role} role" if who.role else "holds none of this service's roles"
        message = f"This route needs a key with the {role} role; {what} {has}."
        if role == "admin" and state.verifier is None and not state.ring.has_role(role):
            message += (" No admin API key exists yet: create one with `python -m tagifai_api keys create "
                        "--name NAME --role admin`.")
        raise ForbiddenError(message)
    return who


def require_role(role: str) -> Callable:
    """Decorate a view so it needs a key of ``role`` (``"admin"`` for anything that changes what is
    served) in modes ``admin`` and ``all``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            check_role(role)
            return view(*args, **kwargs)

        setattr(wrapper, _ROLE_ATTR, role)
        return wrapper

    return decorate


def public(view: Callable) -> Callable:
    """Mark a view as open in mode ``all`` too (a page a browser loads, like ``/docs``)."""
    setattr(view, _PUBLIC_ATTR, True)
    return view


def needed_role(app: Flask, endpoint: str | None, mode: str) -> str | None:
    """The role a request to ``endpoint`` needs in ``mode``; None when it needs no key.

    An unmatched URL (``endpoint`` None) needs a key in mode ``all``, so the 404 for an unknown
    route does not tell an anonymous client which routes exist.
    """
    if mode == "off":
        return None
    view = app.view_functions.get(endpoint) if endpoint else None
    declared = getattr(view, _ROLE_ATTR, None)
    if declared:
        return declared
    if mode == "all" and endpoint not in OPEN_ENDPOINTS and not getattr(view, _PUBLIC_ATTR, False):
        return ROLES[0]
    return None


def _check_request() -> None:
    """Mode ``all``: every route not open needs valid credentials of at least the predict role
    (an admin route's role is checked here too)."""
    role = needed_role(current_app, request.endpoint, "all")
    if role:
        check_role(role)  # a token may hold none of the roles: it is refused here, as a key never is


def init_app(app: Flask, store: Store) -> AuthState:
    """Read the keys from ``store`` (and follow them) and, in mode ``all``, check every request.
    Register after the access log, so refusals carry a request id."""
    mode = str(app.config["AUTH"])
    metrics = getattr(app.extensions.get("tagifai"), "metrics", None)
    verifier = from_settings(app.config, metrics.jwks_fetch_failed if metrics is not None else None)
    state = AuthState(mode, store, float(app.config["REGISTRY_POLL_S"]), verifier)
    app.extensions[EXTENSION] = state
    if state.verifier is not None:
        state.verifier.start()
        log.info("accepting tokens of the identity provider %s for the audience %s", verifier.issuer,
                 verifier.audience)
    if state.mode == "all":
        app.before_request(_check_request)
    if state.mode == "off":
        log.warning("TAGIFAI_AUTH=off: every route is open, those that change what is served included")
    elif not state.ring.has_role("admin") and state.verifier is None:
        log.warning("no admin API key in the state store %s: admin routes answer 401 until one is created",
                    store.describe())
    return state


def key_requirements(app: Flask) -> dict[str, str]:
    """``{endpoint: role}`` for every endpoint that needs a key in this app's mode; the OpenAPI
    document marks exactly these endpoints' operations as secured."""
    mode = app.extensions[EXTENSION].mode
    roles = {endpoint: needed_role(app, endpoint, mode) for endpoint in app.view_functions}
    return {endpoint: role for endpoint, role in roles.items() if role}
