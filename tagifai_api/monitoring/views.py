"""``GET /models/<version>/drift``; the monitor lives in ``app.extensions["tagifai_drift"]``."""

from __future__ import annotations

from http import HTTPStatus

from flask import Blueprint, Flask, current_app

from tagifai_api.ml import versions
from tagifai_api.monitoring.service import DriftMonitor
from tagifai_api.web.context import get_service
from tagifai_api.web.errors import NotFoundError
from tagifai_api.web.responses import construct_response

EXTENSION = "tagifai_drift"

bp = Blueprint("monitoring", __name__)


def init_app(app: Flask, monitor: DriftMonitor) -> None:
    """Keep ``monitor`` for the views (and the registry's listing) and add the route."""
    app.extensions[EXTENSION] = monitor
    app.register_blueprint(bp)


def drift_monitor() -> DriftMonitor:
    """The current app's monitor."""
    return current_app.extensions[EXTENSION]


@bp.get("/models/<version>/drift")
def get_drift(version: str):
    """Return how far a version's newest predictions are from its reference profile (``default`` names the default).
    ---
    get:
      summary: Drift of a version's newest logged predictions from the texts its model learned from
      tags: [monitoring]
      parameters:
        - {name: version, in: path, required: true, schema: {type: string}, example: $default_version}
      responses:
        200: >-
          data.status (ok, warn, drift, not_enough_data or no_profile), data.window (texts, size, minimum, from,
          to) and data.statistics: class_js, class_chi2_p, confidence_ks, length_psi and oov_increase, each with
          its value, warn and drift thresholds and status
        404: Unknown version; data.valid lists the valid ones
        409: The version's reference profile is damaged; data.reason says why
        503: The state store is unavailable (see Retry-After)
    """
    service = get_service()
    name = service.default_name() if version == "default" else version
    if name is None:
        raise NotFoundError("There is no default model version.", data={"valid": []})
    versions.require_known(service.artifacts_dir, name)
    return construct_response(HTTPStatus.OK, data=drift_monitor().report(name))
