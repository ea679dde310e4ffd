"""``GET /args`` and ``GET /args/<arg>``: the training arguments of the default model, or of ``?version=``."""

from http import HTTPStatus

from flask import Blueprint

from tagifai_api.web.context import requested_model
from tagifai_api.web.responses import construct_response
from tagifai_api.web.views.lookup import lookup

bp = Blueprint("args", __name__)


@bp.get("/args")
def list_args():
    """Return every training argument.
    ---
    get:
      summary: All training arguments
      tags: [model]
      parameters: [version]
      responses:
        200: OK
        404: Unknown version; data.valid lists the valid ones
        409: The version cannot be loaded; data.reason says why
    """
    model = requested_model()
    return construct_response(HTTPStatus.OK, data={"model_version": model.version, "args": model.args})


@bp.get("/args/<arg>")
def get_arg(arg: str):
    """Return one training argument; 404 naming the valid ones when it does not exist.
    ---
    get:
      summary: One training argument
      tags: [model]
      parameters:
        - {name: arg, in: path, required: true, schema: {type: string}, example: threshold}
        - version
      responses:
        200: OK
        404: Unknown argument or version
        409: The version cannot be loaded; data.reason says why
    """
    value = lookup(requested_model().args, arg, "arg")
    return construct_response(HTTPStatus.OK, data={arg: value})
