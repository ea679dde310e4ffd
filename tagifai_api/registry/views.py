"""``/models``: what versions exist, which one is the default, and which one shadows it; switching,
rolling back and shadowing need an admin key (see :mod:`tagifai_api.auth`).

A write changes the files in the artifacts directory (:mod:`tagifai_api.store.registry`), then this
worker follows at once; every other worker and replica follows within ``TAGIFAI_REGISTRY_POLL_S``.
"""

from __future__ import annotations

from http import HTTPStatus

from flask import Blueprint, request

from tagifai_api.auth.guard import require_role
from tagifai_api.ml import versions
from tagifai_api.registry.schemas import VersionRequestSchema
from tagifai_api.store import registry
from tagifai_api.web.context import get_service, state
from tagifai_api.web.errors import NotFoundError
from tagifai_api.web.responses import construct_response

bp = Blueprint("registry", __name__, url_prefix="/models")


_body = VersionRequestSchema()


def _shadow_agreement(shadow: str | None) -> dict | None:
    """Counts so far (since the service started, summed over its workers) and the agreement rate."""
    metrics = state().metrics
    if shadow is None or metrics is None:
        return None
    totals = metrics.shadow_totals(shadow)
    scored = totals["agree"] + totals["disagree"]
    return {**totals, "scored": scored, "rate": round(totals["agree"] / scored, 4) if scored else None}


@bp.get("")
def list_models():
    """Return every version, newest first (damaged ones with ``valid: false``), the default and the shadow.
    ---
    get:
      summary: Every model version (newest first), the default, the shadow and its agreement so far
      tags: [registry]
      responses:
        200: OK
    """
    service = get_service()
    root = service.artifacts_dir
    default = service.default_name()
    shadow = registry.shadow_version(root)
    previous = [e["version"] for e in reversed(registry.history(root))]
    models = [{**entry, "default": entry["version"] == default, "shadow": entry["version"] == shadow}
              for entry in versions.describe_all(root)]
    return construct_response(HTTPStatus.OK, data={
        "default": default,
        "shadow": shadow,
        "shadow_agreement": _shadow_agreement(shadow),
        "history": previous,
        "models": models,
    })


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
    described = versions.describe(service.artifacts_dir, name)
    shadow = registry.shadow_version(service.artifacts_dir)
    return construct_response(HTTPStatus.OK, data={**described, "default": name == service.default_name(),
                                                   "shadow": name == shadow})


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
    shadow = registry.shadow_version(get_service().artifacts_dir)
    return construct_response(HTTPStatus.OK, data={"shadow": shadow, "shadow_agreement": _shadow_agreement(shadow)})


def _requested_version() -> str:
    return _body.load(request.get_json())["version"]


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
        400: Malformed JSON
        415: Not JSON
        422: Invalid body
    """
    service = get_service()
    service.check_switchable()  # before the body: a pinned service refuses whatever it asks for
    previous, current = service.set_default(_requested_version())
    return construct_response(HTTPStatus.OK, data={"previous": previous, "default": current})


@bp.post("/default/rollback")
@require_role("admin")
def rollback():
    """Make the previous default the default again (verified first); 409 when there is none.
    ---
    post:
      summary: Make the previous default the default again
      tags: [registry]
      responses:
        200: "Switched: data.previous and data.default"
        409: No earlier default, or it failed verification; nothing changed
    """
    previous, current = get_service().rollback()
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
        400: Malformed JSON
        415: Not JSON
        422: Invalid body
    """
    version = _requested_version()
    previous = get_service().set_shadow(version)
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
    previous = get_service().clear_shadow()
    return construct_response(HTTPStatus.OK, data={"previous": previous, "shadow": None})
