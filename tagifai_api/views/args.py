"""``GET /args`` and ``GET /args/<arg>``: the training arguments of the served model."""

from http import HTTPStatus

from flask import Blueprint

from tagifai_api.errors import ModelNotReadyError
from tagifai_api.responses import construct_response
from tagifai_api.serving.context import get_service
from tagifai_api.serving.service import ModelUnavailableError
from tagifai_api.views.lookup import lookup

bp = Blueprint("args", __name__)


def _model_args() -> dict:
    service = get_service()
    try:
        service.require_model()
    except ModelUnavailableError as exc:
        raise ModelNotReadyError(f"The model is not loaded: {exc}") from None
    return service.model.args


@bp.get("/args")
def list_args():
    """Return every training argument."""
    return construct_response(HTTPStatus.OK, data={"args": _model_args()})


@bp.get("/args/<arg>")
def get_arg(arg: str):
    """Return one training argument; 404 naming the valid ones when it does not exist."""
    value = lookup(_model_args(), arg, "arg")
    return construct_response(HTTPStatus.OK, data={arg: value})
