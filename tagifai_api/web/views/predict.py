"""``POST /predict``: tag texts."""

from http import HTTPStatus

from flask import Blueprint, current_app, g, request
from werkzeug.exceptions import BadRequest, HTTPException

from tagifai_api.web.context import requested_version, state
from tagifai_api.web.responses import construct_response

bp = Blueprint("predict", __name__)


def _read_body() -> None:
    """Read the whole body now; a body the server cannot read (bad chunking, a broken
    connection) is the client's error, answered 400, not a crash."""
    try:
        request.get_data(cache=True)
    except HTTPException:
        raise  # 413 and the like, already the right answer
    except Exception as exc:  # noqa: BLE001 - the WSGI server's own parse errors vary by server
        raise BadRequest("The request body could not be read.") from exc


@bp.post("/predict")
def predict():
    """Tag each of ``{"texts": [{"text": ...}, ...], "explain": false}``, in order, with the default
    version or ``?version=``.
    ---
    post:
      summary: Tag texts
      tags: [model]
      parameters: [version]
      requestBody:
        required: true
        content:
          application/json:
            schema: PredictRequest
            example:
              texts:
                - text: Transfer learning with transformers for text classification.
                - text: Generative adversarial networks for image generation.
      responses:
        200:
          description: Predictions in input order
          content:
            application/json:
              schema: PredictResponse
        400: Malformed JSON
        413: Body too large
        415: Not JSON
        422: Invalid body; data.errors gives each field path and message
        404: Unknown version; data.valid lists the valid ones
        409: The version cannot be loaded; data.reason says why
        503: No model loaded, or the worker's queue is full (see Retry-After)
        504: Waited too long in the queue
    """
    _read_body()
    # begun once the body is here, before it is parsed, so a batch being formed waits for its texts
    tagifai = state()
    with tagifai.service.request(requested_version(), g.get("request_id")) as answering:
        body = tagifai.predict_schema.load(request.get_json())
        texts = [item["text"] for item in body["texts"]]
        g.texts = len(texts)
        timeout_s = current_app.config["PREDICT_TIMEOUT_MS"] / 1000.0
        results = (answering.explain if body["explain"] else answering.predict)(texts, timeout_s)
    version = answering.version
    g.model_version = version
    metrics = tagifai.metrics
    if metrics is not None:
        metrics.request(texts, results, version)
    predictions = [{"input_text": text, **result} for text, result in zip(texts, results)]
    return construct_response(HTTPStatus.OK, data={"model_version": version, "predictions": predictions})
