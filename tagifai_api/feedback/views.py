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
from tagifai_api.ml.artifacts import ArtifactError, ModelVersion
from tagifai_api.serving.service import ModelService, SwitchRefusedError
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
                          index: {type: integer, minimum: 0, maximum: 2147483647, default: 0,
                                  description: Which text of that request.}
                          tag: {type: string, minLength: 1, maxLength: 64, pattern: '^[^\\x00]*$',
                                description: "One of the classes of the version that made the prediction (its labels
                                  in GET /models/{version}); another is a 422 that lists them."}
                      - type: object
                        additionalProperties: false
                        required: [text, tag]
                        properties:
                          text: {type: string, minLength: 1, maxLength: 10000,
                                 pattern: '^[^\\x00]*[^\\s\\x00\\x1c-\\x1f\\x85\\ufeff][^\\x00]*$',
                                 description: "Any text, tagged by hand: not only whitespace, and no NUL."}
                          tag: {type: string, minLength: 1, maxLength: 64, enum: $default_classes,
                                description: "One of the default version's classes (its labels in GET /models/default:
                                  the enum lists them as they were when this document was made); another is a 422
                                  that lists them."}
            example:
              feedback:
                - {request_id: a39ec4f6758f45fc0000000000000000, index: 0, tag: mlops}
                - {text: Serving models with Kubernetes and a feature store., tag: mlops}
      responses:
        200: "data.items: one report per item (status created, updated, unknown_request or unknown_index)"
        400: Malformed JSON
        415: Not JSON
        422: "Invalid body, or a tag that is not one of the classes of the version it is checked against
          (data.errors lists them, e.g. under feedback.0.tag)"
    """
    items = _body.load(request.get_json())["feedback"]
    service, feedback = get_service(), _feedback()
    default = service.model_version(None)
    longest = int(current_app.config["MAX_TEXT_LENGTH"])
    wrong: dict[str, dict] = {}
    # what needs no store first, so bad input is a 422 even while the store is down
    for i, item in enumerate(items):
        if "text" in item:
            if len(item["text"]) > longest:
                wrong.setdefault(str(i), {})["text"] = [f"Longer than maximum length {longest}."]
            _check_tag(wrong, i, item["tag"], default)
    if wrong:
        raise ValidationError({"feedback": wrong})
    logged = feedback.find(items)
    models = {default.version: default}
    for i, item in enumerate(items):
        row = logged.get((item.get("request_id"), item.get("index")))
        if row is not None:  # an unknown request or index is reported in its item's status instead
            _check_tag(wrong, i, item["tag"], _model_of(service, row["model_version"], models, default))
    if wrong:
        raise ValidationError({"feedback": wrong})
    key = g.get("api_key")
    reports = feedback.record(items, key.name if key is not None else None, logged)
    metrics = state().metrics
    if metrics is not None:
        for item, report in zip(items, reports, strict=True):
            if report["status"] in ("created", "updated") and "predicted" in report:
                metrics.feedback(report["model_version"], report["predicted"], item["tag"])
    recorded = sum(r["status"] in ("created", "updated") for r in reports)
    if recorded and current_app.config["AUTO_ROLLBACK"]:
        _watch_default()
    return construct_response(HTTPStatus.OK, data={"recorded": recorded, "items": reports})


def _check_tag(wrong: dict[str, dict], i: int, tag: str, model: ModelVersion) -> None:
    """A tag must be one of the classes of the version it corrects: another could not be trained on, nor
    compared with what that version answers."""
    if tag not in model.labels:
        wrong.setdefault(str(i), {})["tag"] = [f"Must be one of the classes of {model.version}: "
                                               f"{', '.join(model.labels)}."]


def _model_of(service: ModelService, version: str, seen: dict[str, ModelVersion],
              default: ModelVersion) -> ModelVersion:
    """The metadata of the version that made a logged prediction, read once a request and without loading
    it; the default's when that version is gone or its files cannot be read."""
    if version not in seen:
        try:
            seen[version] = service.metadata(version)
        except ArtifactError:  # unknown (deleted) or invalid
            seen[version] = default
    return seen[version]


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
