"""``GET /performance``: the test-split metrics of the default model, or of ``?version=``."""

from http import HTTPStatus

from flask import Blueprint, request

from tagifai_api.web.context import requested_model
from tagifai_api.web.responses import construct_response
from tagifai_api.web.views.lookup import lookup

bp = Blueprint("performance", __name__)


@bp.get("/performance")
def get_performance():
    """Return performance.json, or the part ``?filter=overall|class|slices[.key...]`` selects."""
    model = requested_model()
    performance = model.performance
    selector = request.args.get("filter")
    if selector:
        performance = lookup(performance, selector, "filter")
    return construct_response(HTTPStatus.OK, data={"model_version": model.version, "performance": performance})
