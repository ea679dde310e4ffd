"""``GET /``: the lesson's health check."""

from http import HTTPStatus

from flask import Blueprint

from tagifai_api.web.context import get_service
from tagifai_api.web.responses import construct_response

bp = Blueprint("index", __name__)


@bp.get("/")
def index():
    """Answer 200 while the process is up, with the model version when one is loaded.
    ---
    get:
      summary: Health check
      tags: [health]
      responses:
        200: OK
    """
    service = get_service()
    data = {"model_version": service.model.version} if service.ready else {}
    return construct_response(HTTPStatus.OK, data=data)
