"""``/models``: what versions exist, which one is the default, and which one shadows it; switching,
rolling back and shadowing need an admin key (see :mod:`tagifai_api.auth`).

A write changes the files in the artifacts directory (:mod:`tagifai_api.store.registry`), then this
worker follows at once; every other worker and replica follows within ``TAGIFAI_REGISTRY_POLL_S``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

from flask import Blueprint, current_app, request

from tagifai_api.auth.guard import require_role
from tagifai_api.ml import versions
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.registry.schemas import VersionRequestSchema
from tagifai_api.serving.service import ModelService
from tagifai_api.store import registry
from tagifai_api.web.context import get_service, unknown_version
from tagifai_api.web.errors import ConflictError, NotFoundError, TagifaiError
from tagifai_api.web.responses import construct_response

bp = Blueprint("registry", __name__, url_prefix="/models")


_body = VersionRequestSchema()


class RegistryWriteFailed(TagifaiError):
    """The artifacts directory is not writable by the service: a deployment fault, not the client's."""

    status = 500


def _default_name() -> str | None:
    service = get_service()
    if service.pinned:
        return service.pinned
    try:
        return registry.pointers(service.artifacts_dir)[0]
    except ArtifactError:
        return None


def _shadow_agreement(shadow: str | None) -> dict | None:
    """Counts so far (since the service started, summed over its workers) and the agreement rate."""
    metrics = current_app.extensions.get("tagifai_metrics")
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
    root = get_service().artifacts_dir
    default = _default_name()
    try:
        shadow = registry.shadow_version(root)
        previous = [e["version"] for e in reversed(registry.history(root))]
    except ArtifactError as exc:
        raise ConflictError(f"The registry's state cannot be read: {exc}") from None
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
    root = get_service().artifacts_dir
    name = _default_name() if version == "default" else version
    if name is None:
        raise NotFoundError("There is no default model version.", data={"valid": []})
    try:
        described = versions.describe(root, name)
    except versions.UnknownVersionError as exc:
        raise unknown_version(exc) from None
    except ArtifactError as exc:
        raise ConflictError(f"Model version {name!r} is not valid: {exc}",
                            data={"version": name, "valid": False, "reason": str(exc)}) from None
    shadow = registry.shadow_version(root)
    return construct_response(HTTPStatus.OK, data={**described, "default": name == _default_name(),
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


@contextmanager
def _refusals() -> Iterator[None]:
    """A version that does not exist is 404; one that fails verification, or a state that does not
    allow the change, is 409 and nothing changed."""
    try:
        yield
    except versions.UnknownVersionError as exc:
        raise unknown_version(exc) from None
    except registry.RegistryWriteError as exc:
        raise RegistryWriteFailed(f"Nothing changed: {exc}.") from None
    except registry.RegistryConflictError as exc:
        raise ConflictError(f"Nothing changed: {exc}.") from None
    except ArtifactError as exc:
        raise ConflictError(f"Nothing changed: the version failed verification: {exc}",
                            data={"reason": str(exc)}) from None


def _switchable() -> ModelService:
    service = get_service()
    if service.pinned:
        raise ConflictError(f"This service is pinned to {service.pinned} by TAGIFAI_MODEL_VERSION; unset it to "
                            "switch the default through the registry.")
    return service


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
    service = _switchable()
    version = _requested_version()
    with _refusals():
        previous, current = registry.set_default(service.artifacts_dir, version, verifier=service.verify)
    service.refresh()
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
    service = _switchable()
    with _refusals():
        previous, current = registry.rollback(service.artifacts_dir, verifier=service.verify)
    service.refresh()
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
    service = get_service()
    version = _requested_version()
    if version == _default_name():
        raise ConflictError(f"{version} is the default already; a shadow is scored against the default.")
    with _refusals():
        previous = registry.set_shadow(service.artifacts_dir, version, verifier=service.verify)
    service.refresh()
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
    service = get_service()
    previous = registry.clear_shadow(service.artifacts_dir)
    service.refresh()
    return construct_response(HTTPStatus.OK, data={"previous": previous, "shadow": None})
