"""``GET /performance``: the default model's test-split metrics."""

from http import HTTPStatus

from flask import Blueprint, request

from tagifai_api.errors import ModelNotReadyError
from tagifai_api.responses import construct_response
from tagifai_api.serving.context import get_service
from tagifai_api.serving.service import ModelUnavailableError
from tagifai_api.views.lookup import lookup

bp = Blueprint("performance", __name__)


@bp.get("/performance")
def get_performance():
    """Return performance.json, or the part ``?filter=overall|class|slices[.key...]`` selects."""
    service = get_service()
    try:
        service.require_model()
    except ModelUnavailableError as exc:
        raise ModelNotReadyError(f"The model is not loaded: {exc}") from None
    performance = service.model.performance
    selector = request.args.get("filter")
    if selector:
        performance = lookup(performance, selector, "filter")
    return construct_response(HTTPStatus.OK, data={"performance": performance})
