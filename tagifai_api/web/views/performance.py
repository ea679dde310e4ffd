"""``GET /performance``: the test-split metrics of the default model, or of ``?version=``."""

from http import HTTPStatus

from flask import Blueprint, request

from tagifai_api.web.context import requested_model
from tagifai_api.web.responses import construct_response
from tagifai_api.web.views.lookup import lookup

bp = Blueprint("performance", __name__)


@bp.get("/performance")
def get_performance():
    """Return performance.json, or the part ``?filter=overall|class|slices[.key...]`` selects.
    ---
    get:
      summary: Test-split metrics of the served model
      tags: [model]
      parameters:
        - name: filter
          in: query
          required: false
          schema: {type: string}
          description: "A part of the report: overall, class, slices, or deeper with dots (class.mlops)."
          example: overall
        - version
      responses:
        200: OK
        404: Unknown filter or version; the valid ones are listed
        409: The version cannot be loaded; data.reason says why
    """
    model = requested_model()
    performance = model.performance
    selector = request.args.get("filter")
    if selector:
        performance = lookup(performance, selector, "filter")
    return construct_response(HTTPStatus.OK, data={"model_version": model.version, "performance": performance})
