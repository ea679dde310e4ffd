"""``POST /feedback`` and ``GET /models/<version>/quality``."""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Blueprint, current_app, g, request
from marshmallow import ValidationError

from tagifai_api.auth.guard import require_role
from tagifai_api.feedback.schemas import FeedbackRequestSchema, QualityQuerySchema
from tagifai_api.feedback.service import FeedbackService
from tagifai_api.ml import versions
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.serving.service import SwitchRefusedError
from tagifai_api.store.database import StoreError
from tagifai_api.web.context import get_service, state
from tagifai_api.web.responses import construct_response

log = logging.getLogger(__name__)

bp = Blueprint("feedback", __name__)

_body = FeedbackRequestSchema()
_quality_query = QualityQuerySchema()


def _feedback() -> FeedbackService:
    return FeedbackService(get_service().registry.store)


@bp.post("/feedback")
@require_role("predict")
def post_feedback():
    """Record corrections of the service's tags: of logged predictions, or of any text.
    ---
    post:
      summary: Correct tags; the corrections measure each version's live accuracy and can be trained on
      tags: [feedback]
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              additionalProperties: false
              required: [feedback]
              properties:
                feedback:
                  type: array
                  minItems: 1
                  maxItems: 100
                  description: "1 to 100 corrections: of a logged prediction, or of any text."
                  items:
                    oneOf:
                      - type: object
                        additionalProperties: false
                        required: [request_id, tag]
                        properties:
                          request_id: {type: string, minLength: 1, maxLength: 128, pattern: '^[^\\x00]*$',
                                       description: The X-Request-ID of a /predict answer.}
                          index: {type: integer, minimum: 0, default: 0, description: Which text of that request.}
                          tag: {type: string, enum: [computer-vision, mlops, natural-language-processing, other]}
                      - type: object
                        additionalProperties: false
                        required: [text, tag]
                        properties:
                          text: {type: string, minLength: 1, maxLength: 10000,
                                 pattern: '^[^\\x00]*[^\\s\\x00\\x1c-\\x1f\\x85\\ufeff][^\\x00]*$',
                                 description: "Any text, tagged by hand: not only whitespace, and no NUL."}
                          tag: {type: string, enum: [computer-vision, mlops, natural-language-processing, other]}
            example:
              feedback:
                - {request_id: a39ec4f6758f45fc0000000000000000, index: 0, tag: mlops}
                - {text: Serving models with Kubernetes and a feature store., tag: mlops}
      responses:
        200: "data.items: one report per item (status created, updated, unknown_request or unknown_index)"
        400: Malformed JSON
        415: Not JSON
        422: Invalid body, or a tag that is not one of the model's classes (data.errors lists them)
    """
    items = _body.load(request.get_json())["feedback"]
    labels = get_service().model_version(None).labels
    longest = int(current_app.config["MAX_TEXT_LENGTH"])
    wrong: dict[str, dict] = {}
    for i, item in enumerate(items):
        if item["tag"] not in labels:
            wrong.setdefault(str(i), {})["tag"] = [f"Must be one of: {', '.join(labels)}."]
        if len(item.get("text", "")) > longest:
            wrong.setdefault(str(i), {})["text"] = [f"Longer than maximum length {longest}."]
    if wrong:
        raise ValidationError({"feedback": wrong})
    key = g.get("api_key")
    reports = _feedback().record(items, key.name if key is not None else None)
    metrics = state().metrics
    if metrics is not None:
        for item, report in zip(items, reports, strict=True):
            if report["status"] in ("created", "updated") and "predicted" in report:
                metrics.feedback(report["model_version"], report["predicted"], item["tag"])
    recorded = sum(r["status"] in ("created", "updated") for r in reports)
    if recorded and current_app.config["AUTO_ROLLBACK"]:
        _watch_default()
    return construct_response(HTTPStatus.OK, data={"recorded": recorded, "items": reports})


def _watch_default() -> None:
    """After new corrections, the automatic rollback's check (a promoted default that live feedback shows
    worse); it never fails the request that recorded them."""
    try:
        rolled = _feedback().watch_default(get_service(), int(current_app.config["AUTO_ROLLBACK_MIN_FEEDBACK"]))
    except (StoreError, ArtifactError, SwitchRefusedError) as exc:
        log.warning("the automatic rollback's check did not run: %s", exc)
        return
    metrics = state().metrics
    if rolled is not None and metrics is not None:
        metrics.auto_rollback()


@bp.get("/models/<version>/quality")
def get_quality(version: str):
    """Return a version's live accuracy from the feedback on its predictions (``default`` names the default).
    ---
    get:
      summary: Live accuracy of a version, from the feedback on its predictions
      tags: [feedback]
      parameters:
        - {name: version, in: path, required: true, schema: {type: string}, example: $default_version}
        - {name: days, in: query, required: false, schema: {type: number, default: 7, minimum: 0.01, maximum: 3650}}
      responses:
        200: "data.all and data.recent: count, accuracy, accuracy_95 (Wilson), per_class, confusion;
          data.test_split_f1 from the version's metadata (null when it cannot be read; the model is not loaded)"
        404: Unknown version; data.valid lists the valid ones
        422: Invalid days
    """
    service = get_service()
    days = _quality_query.load(request.args)["days"]
    name = service.default_name() if version == "default" else version
    versions.require_known(service.artifacts_dir, name or "default")
    # read from the version's files, never loaded: this GET needs no key, and a load could push out a
    # loaded version; the corrections are in the store, so even a version whose files fail has its report
    try:
        model = service.metadata(name)
        labels, f1 = model.labels, model.performance.get("overall", {}).get("f1")
    except versions.InvalidVersionError:
        labels, f1 = [], None
    return construct_response(HTTPStatus.OK, data={
        "model_version": name, "test_split_f1": f1, **_feedback().quality(name, labels, days)})
