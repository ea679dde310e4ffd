"""``/models``: what versions exist, which one is the default, and which one shadows it."""

from __future__ import annotations

from http import HTTPStatus

from flask import Blueprint, current_app

from tagifai_api.errors import ConflictError, NotFoundError
from tagifai_api.ml import registry
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.responses import construct_response
from tagifai_api.serving.context import get_service, unknown_version

bp = Blueprint("registry", __name__, url_prefix="/models")


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
    """Return every version, newest first (damaged ones with ``valid: false``), the default and the shadow."""
    root = get_service().artifacts_dir
    default = _default_name()
    try:
        shadow = registry.shadow_version(root)
        previous = [e["version"] for e in reversed(registry.history(root))]
    except ArtifactError as exc:
        raise ConflictError(f"The registry's state cannot be read: {exc}") from None
    models = [{**entry, "default": entry["version"] == default, "shadow": entry["version"] == shadow}
              for entry in registry.describe_all(root)]
    return construct_response(HTTPStatus.OK, data={
        "default": default,
        "shadow": shadow,
        "shadow_agreement": _shadow_agreement(shadow),
        "history": previous,
        "models": models,
    })


@bp.get("/<version>")
def get_model(version: str):
    """Return one version's manifest, args and performance (``default`` names the default)."""
    root = get_service().artifacts_dir
    name = _default_name() if version == "default" else version
    if name is None:
        raise NotFoundError("There is no default model version.", data={"valid": []})
    try:
        described = registry.describe(root, name)
    except registry.UnknownVersionError as exc:
        raise unknown_version(exc) from None
    except ArtifactError as exc:
        raise ConflictError(f"Model version {name!r} is not valid: {exc}",
                            data={"version": name, "valid": False, "reason": str(exc)}) from None
    shadow = registry.shadow_version(root)
    return construct_response(HTTPStatus.OK, data={**described, "default": name == _default_name(),
                                                   "shadow": name == shadow})
