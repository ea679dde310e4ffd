"""The request check: which key a request carries, and whether the route lets it through.

See the package docstring for how views use :func:`require_role` and :func:`public`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from flask import Flask, current_app, g, request

from tagifai_api.auth.keys import ROLES, ApiKey, KeyRing, role_allows
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
    """No key, or one the service does not know (revoked, mistyped)."""

    status = 401
    message = "This route needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'."

    def __init__(self, message: str | None = None, error: str | None = None):
        challenge = 'Bearer realm="tagifai"' + (f', error="{error}"' if error else "")
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class ForbiddenError(TagifaiError):
    """A known key whose role is too low for the route."""

    status = 403
    message = "This API key's role may not use this route."


class AuthState:
    """Per-app state: the mode and the keys in force."""

    def __init__(self, mode: str, store: Store, poll_s: float) -> None:
        self.mode = mode
        self.store = store
        self.ring = KeyRing(store, poll_s if mode != "off" else 0)


def _state() -> AuthState:
    return current_app.extensions[EXTENSION]


def _presented_key() -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("X-API-Key", "").strip() or None


def authenticate() -> ApiKey:
    """The key this request carries, checked against the keys in force; 401 if missing or unknown.

    Sets ``g.api_key_name``, which the access line records (the key itself is never logged).
    """
    key = _presented_key()
    if key is None:
        raise UnauthorizedError()
    found = _state().ring.lookup(key)
    if found is None:
        raise UnauthorizedError("The API key is not valid (unknown or revoked).", error="invalid_token")
    g.api_key_name = found.name
    return found


def check_role(role: str) -> ApiKey | None:
    """Let the request through only with a key of ``role`` or stronger (unless the mode is ``off``).

    401 without a valid key, 403 when its role is too low, and 403 saying so when no key of
    ``role`` or stronger exists at all (a fresh install: such routes are never open by default).
    """
    state = _state()
    if state.mode == "off":
        return None
    if not state.ring.has_role(role):
        raise ForbiddenError(
            f"No {role} API key is configured, so this route is closed. Create one with "
            f"`python -m tagifai_api keys create --name NAME --role {role}`.")
    key = g.get("api_key") or authenticate()
    g.api_key = key
    if not role_allows(key.role, role):
        raise ForbiddenError(f"This route needs a key with the {role} role; the key '{key.name}' has the "
                             f"{key.role} role.")
    return key


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
    """Mode ``all``: every route not open needs a valid key (its role is checked by the view's
    :func:`require_role`, if it has one)."""
    if needed_role(current_app, request.endpoint, "all"):
        g.api_key = authenticate()


def init_app(app: Flask, store: Store) -> AuthState:
    """Read the keys from ``store`` (and follow them) and, in mode ``all``, check every request.
    Register after the access log, so refusals carry a request id."""
    state = AuthState(str(app.config["AUTH"]), store, float(app.config["REGISTRY_POLL_S"]))
    app.extensions[EXTENSION] = state
    if state.mode == "all":
        app.before_request(_check_request)
    if state.mode == "off":
        log.warning("TAGIFAI_AUTH=off: every route is open, those that change what is served included")
    elif not state.ring.has_role("admin"):
        log.warning("no admin API key in the state store %s: admin routes answer 403 until one is created",
                    store.describe())
    return state


def key_requirements(app: Flask) -> dict[str, str]:
    """``{endpoint: role}`` for every endpoint that needs a key in this app's mode; the OpenAPI
    document marks exactly these endpoints' operations as secured."""
    mode = app.extensions[EXTENSION].mode
    roles = {endpoint: needed_role(app, endpoint, mode) for endpoint in app.view_functions}
    return {endpoint: role for endpoint, role in roles.items() if role}
