"""``/models``: what versions exist, which one is the default, and which one shadows it; switching,
rolling back and shadowing need an admin key (see :mod:`tagifai_api.auth`).

A write changes the state store (:mod:`tagifai_api.store.registry`), then this worker follows at
once; every other worker and replica sharing the store follows within ``TAGIFAI_REGISTRY_POLL_S``.
While the store is down, a version (and the default and shadow) is described from what this worker
last read; the listing, which holds the store's history, and every change answer 503.
"""

from __future__ import annotations

from http import HTTPStatus

from flask import Blueprint, g, request

from tagifai_api.auth.guard import require_role
from tagifai_api.ml import versions
from tagifai_api.monitoring.views import drift_monitor
from tagifai_api.registry.schemas import HistoryQuerySchema, ReasonSchema, VersionRequestSchema
from tagifai_api.web.context import get_service, state
from tagifai_api.web.errors import NotFoundError
from tagifai_api.web.responses import construct_response

bp = Blueprint("registry", __name__, url_prefix="/models")


_body = VersionRequestSchema()
_reason = ReasonSchema()
_history_query = HistoryQuerySchema()


def _shadow_agreement(shadow: str | None) -> dict | None:
    """Counts so far (since the service started, summed over its workers) and the agreement rate."""
    metrics = state().metrics
    if shadow is None or metrics is None:
        return None
    totals = metrics.shadow_totals(shadow)
    scored = totals["agree"] + totals["disagree"]
    return {**totals, "scored": scored, "rate": round(totals["agree"] / scored, 4) if scored else None}


def _live(counts: tuple[int, int] | None) -> dict:
    """A version's feedback so far: how many corrections of its predictions, and how many were right."""
    n, right = counts or (0, 0)
    return {"feedback": n, "accuracy": round(right / n, 4) if n else None}


def _drift(report: dict | None) -> dict | None:
    """A version's drift status and how many logged predictions it rests on (GET /models/<v>/drift for the rest)."""
    return None if report is None else {"status": report["status"], "texts": report["window"]["texts"]}


@bp.get("")
def list_models():
    """Return every version, newest first (damaged ones with ``valid: false``), the default and the shadow.
    ---
    get:
      summary: >-
        Every model version (newest first) with its live accuracy and drift status, the default, the shadow
        and its agreement so far
      tags: [registry]
      responses:
        200: OK
        503: The state store is unavailable (see Retry-After)
    """
    service = get_service()
    root = service.artifacts_dir
    default = service.default_name()
    shadow = service.shadow_name()
    previous = [e["version"] for e in reversed(service.registry.history())]
    live = service.registry.store.feedback_summary()
    described = versions.describe_all(root)
    drift = drift_monitor().reports(e["version"] for e in described if e["valid"])
    models = [{**entry, "default": entry["version"] == default, "shadow": entry["version"] == shadow,
               "live": _live(live.get(entry["version"])), "drift": _drift(drift.get(entry["version"]))}
              for entry in described]
    return construct_response(HTTPStatus.OK, data={
        "default": default,
        "fallback": service.fallback,  # this worker's: it serves another version than the default
        "shadow": shadow,
        "shadow_agreement": _shadow_agreement(shadow),
        "history": previous,
        "models": models,
    })


@bp.get("/history")
@require_role("admin")
def get_history():
    """Return the audit log of registry and key changes, newest first (``?limit=``, default 100).
    ---
    get:
      summary: "The audit log: registry switches and key changes, newest first, with who and why"
      tags: [registry]
      parameters:
        - {name: limit, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
      responses:
        200: "data.changes: at, action, from, to, key_name, reason"
        422: Invalid limit
        503: The state store is unavailable (see Retry-After)
    """
    limit = _history_query.load(request.args)["limit"]
    return construct_response(HTTPStatus.OK, data={"changes": get_service().registry.store.audit(limit)})


@bp.get("/<version>")
def get_model(version: str):
    """Return one version's manifest, args and performance (``default`` names the default).
    ---
    get:
      summary: One version's manifest, args and performance
      tags: [registry]
      parameters:
        - name: version
          in: path
          required: true
          schema: {type: string}
          description: A version listed by GET /models (`default` names the default).
          example: $default_version
      responses:
        200: OK
        404: Unknown version; data.valid lists the valid ones
        409: The version cannot be loaded; data.reason says why
    """
    service = get_service()
    default = service.default_name()
    name = default if version == "default" else version
    if name is None:
        raise NotFoundError("There is no default model version.", data={"valid": []})
    try:
        described = versions.describe(service.artifacts_dir, name)
    except versions.InvalidVersionError as exc:
        if service.fallback is not None and service.fallback["wanted"] == name:
            exc.fallback = dict(service.fallback)  # the 409 says what this worker serves instead
        raise
    fallback = service.fallback if service.fallback is not None and service.fallback["wanted"] == name else None
    return construct_response(HTTPStatus.OK, data={**described, "default": name == default,
                                                   "shadow": name == service.shadow_name(), "fallback": fallback})


@bp.get("/default")
def get_default_model():
    """Return the default version's manifest, args and performance (``/models/<version>`` for it).
    ---
    get:
      summary: The default version's manifest, args and performance
      tags: [registry]
      responses:
        200: OK
        404: No default version
        409: The default is damaged
    """
    return get_model("default")


@bp.get("/shadow")
def get_shadow():
    """Return the shadow version (or null) and its agreement with the served answers so far.
    ---
    get:
      summary: The shadow version (or null) and its agreement with the served answers so far
      tags: [registry]
      responses:
        200: OK
    """
    shadow = get_service().shadow_name()
    return construct_response(HTTPStatus.OK, data={"shadow": shadow, "shadow_agreement": _shadow_agreement(shadow)})


def _key_name() -> str | None:
    """The name of the key that passed the check, for the audit log (None where no key was needed)."""
    key = g.get("api_key")
    return key.name if key is not None else None


def _optional_reason() -> str | None:
    """A rollback's reason: its body is optional, but if there is one it must be valid."""
    if not request.get_data(cache=True):
        return None
    return _reason.load(request.get_json())["reason"]


@bp.put("/default")
@require_role("admin")
def set_default():
    """Verify a version (every checksum, a warm-up prediction), then make it the default everywhere.
    ---
    put:
      summary: >-
        Verify a version (checksums, a warm-up prediction), then make it the default of every worker and
        replica within seconds
      tags: [registry]
      requestBody:
        required: true
        content:
          application/json:
            schema: tagifai_api.registry.schemas.VersionRequestSchema
            example: {version: $default_version}
      responses:
        200: "Switched: data.previous and data.default"
        404: Unknown version; data.valid lists the valid ones
        409: The version failed verification, or the service pins its version; nothing changed
        503: The state store is unavailable; nothing changed (see Retry-After)
        400: Malformed JSON
        415: Not JSON
        422: Invalid body
    """
    service = get_service()
    service.check_switchable()  # before the body: a pinned service refuses whatever it asks for
    body = _body.load(request.get_json())
    previous, current = service.set_default(body["version"], _key_name(), body["reason"])
    return construct_response(HTTPStatus.OK, data={"previous": previous, "default": current})


@bp.post("/default/rollback")
@require_role("admin")
def rollback():
    """Make the previous default the default again (verified first); 409 when there is none.
    ---
    post:
      summary: Make the previous default the default again
      tags: [registry]
      requestBody:
        required: false
        content:
          application/json:
            schema: tagifai_api.registry.schemas.ReasonSchema
            example: {reason: a regression in the new version}
      responses:
        200: "Switched: data.previous and data.default"
        409: No earlier default, or it failed verification; nothing changed
        503: The state store is unavailable; nothing changed (see Retry-After)
        400: Malformed JSON
        415: A body that is not JSON
        422: Invalid body
    """
    previous, current = get_service().rollback(_key_name(), _optional_reason())
    return construct_response(HTTPStatus.OK, data={"previous": previous, "default": current})


@bp.put("/shadow")
@require_role("admin")
def set_shadow():
    """Verify a version, then have it score every /predict in the background (its answers are only counted).
    ---
    put:
      summary: Verify a version, then score every /predict with it too, in the background
      tags: [registry]
      requestBody:
        required: true
        content:
          application/json:
            schema: tagifai_api.registry.schemas.VersionRequestSchema
            example: {version: $other_version}
      responses:
        200: OK
        404: Unknown version; data.valid lists the valid ones
        409: The version failed verification, or is the default; nothing changed
        503: The state store is unavailable; nothing changed (see Retry-After)
        400: Malformed JSON
        415: Not JSON
        422: Invalid body
    """
    body = _body.load(request.get_json())
    version = body["version"]
    previous = get_service().set_shadow(version, _key_name(), body["reason"])
    return construct_response(HTTPStatus.OK, data={"previous": previous, "shadow": version})


@bp.delete("/shadow")
@require_role("admin")
def clear_shadow():
    """Stop shadow scoring (200 also when there was no shadow).
    ---
    delete:
      summary: Stop shadow scoring
      tags: [registry]
      responses:
        200: OK
    """
    previous = get_service().clear_shadow(_key_name())
    return construct_response(HTTPStatus.OK, data={"previous": previous, "shadow": None})
