"""``/health/live`` and ``/health/ready``: probes for load balancers and Kubernetes."""

import os
import time
from http import HTTPStatus

from flask import Blueprint

from tagifai_api.web.context import get_service
from tagifai_api.web.responses import construct_response

bp = Blueprint("health", __name__, url_prefix="/health")

_STARTED = time.time()


@bp.get("/live")
def live():
    """Answer 200 whenever the process can answer at all (no model needed).
    ---
    get:
      summary: Liveness probe
      tags: [health]
      responses:
        200: OK
    """
    return construct_response(HTTPStatus.OK, data={"pid": os.getpid()})


@bp.get("/ready")
def ready():
    """Answer 200 only when this worker has a warmed-up model, else 503.
    ---
    get:
      summary: "Readiness probe: 200 only with a loaded, warmed-up model"
      tags: [health]
      responses:
        200: OK
        503: No model loaded
    """
    service = get_service()
    service.maybe_reload()
    data = {
        "ready": service.ready,
        "model_version": service.model.version if service.ready else None,
        "uptime_seconds": round(time.time() - _STARTED, 3),
        "pid": os.getpid(),
        # the store's state, not a reason to fail readiness: requests are answered from what this
        # worker last read, and only changes need the store
        "store": {"ok": service.store_error is None, "error": service.store_error},
        # serving another version than the default it cannot load: still ready (it answers), but say so
        "degraded": service.fallback is not None,
    }
    if service.fallback is not None:
        data["fallback"] = dict(service.fallback)
        data["reason"] = service.fallback["reason"]
    if service.ready:
        return construct_response(HTTPStatus.OK, data=data)
    data["reason"] = service.load_error
    return construct_response(HTTPStatus.SERVICE_UNAVAILABLE, data=data, message="The model is not loaded.")
