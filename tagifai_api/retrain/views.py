"""``POST /models/retrain`` (and ``GET``, its newest jobs), ``GET /jobs/<id>`` and ``POST
/models/default/promote-shadow``: every one needs an admin key (they change what is served, or report
on what does)."""

from __future__ import annotations

from http import HTTPStatus

from flask import Blueprint, current_app, g, request

from tagifai_api.auth.guard import require_role
from tagifai_api.retrain.schemas import RetrainRequestSchema
from tagifai_api.retrain.service import NotWritableError, RetrainService
from tagifai_api.web.context import get_service
from tagifai_api.web.errors import ConflictError, NotFoundError
from tagifai_api.web.responses import construct_response

bp = Blueprint("retrain", __name__)

_body = RetrainRequestSchema()


def _retrain() -> RetrainService:
    return RetrainService(get_service(), current_app.config)


def _key_name() -> str | None:
    key = g.get("api_key")
    return key.name if key is not None else None


@bp.post("/models/retrain")
@require_role("admin")
def start_retrain():
    """Start retraining from the feedback in a process of its own; 202 with the job to follow.
    ---
    post:
      summary: >-
        Retrain on the dataset plus the feedback, judge the candidate against the default and promote,
        shadow or keep it; answers at once with the job (GET /jobs/{job_id})
      tags: [retraining]
      requestBody:
        required: false
        content:
          application/json:
            schema: tagifai_api.retrain.schemas.RetrainRequestSchema
            example: {shadow: true}
      responses:
        202: "Started: data.job (id, state, stage, progress); Location names it"
        409: "A retraining is running already (data.job names it), or versions cannot be written here"
        503: The state store is unavailable; nothing started (see Retry-After)
        400: Malformed JSON
        415: A body that is not JSON
        422: Invalid body
    """
    shadow = _body.load(request.get_json())["shadow"] if request.get_data(cache=True) else False
    try:
        job = _retrain().start(shadow, _key_name())
    except NotWritableError as exc:
        raise ConflictError(str(exc)) from None
    return construct_response(HTTPStatus.ACCEPTED, data={"job": job}, headers={"Location": f"/jobs/{job['id']}"},
                              message=f"Retraining started as job {job['id']}.")


@bp.get("/models/retrain")
@require_role("admin")
def list_retrains():
    """Return the newest retraining jobs, newest first (the running one, if any, is the first).
    ---
    get:
      summary: The newest retraining jobs (at most 20), newest first, with their state and result
      tags: [retraining]
      responses:
        200: "data.jobs: each as GET /jobs/{job_id} gives it"
        503: The state store is unavailable (see Retry-After)
    """
    return construct_response(HTTPStatus.OK, data={"jobs": _retrain().recent()})


@bp.get("/jobs/<job_id>")
@require_role("admin")
def get_job(job_id: str):
    """Return a job: its state, stage, progress and, once it ended, its result or error.
    ---
    get:
      summary: A retraining job's state, stage, progress and result (the decision and its numbers)
      tags: [retraining]
      parameters:
        - {name: job_id, in: path, required: true, schema: {type: string}}
      responses:
        200: "data.job: state (queued, running, succeeded, failed), stage, progress, result, error"
        404: No such job
        503: The state store is unavailable (see Retry-After)
    """
    job = _retrain().job(job_id)
    if job is None:
        raise NotFoundError(f"No job {job_id!r}.")
    return construct_response(HTTPStatus.OK, data={"job": job})


@bp.post("/models/default/promote-shadow")
@require_role("admin")
def promote_shadow():
    """Promote the shadowed candidate if it scored enough live texts and the gate still holds.
    ---
    post:
      summary: >-
        Promote the shadow if it scored enough live texts and still beats the default on the feedback
        it never learnt from; else nothing changes and the answer says which rule failed
      tags: [retraining]
      responses:
        200: "Promoted: data.decision, data.gate (every rule with its numbers), data.shadow (agreement)"
        409: "Not promoted (data.gate.failed names the rules), no shadow, or a shadow not made by retraining"
        503: The state store is unavailable; nothing changed (see Retry-After)
    """
    decision = _retrain().promote_shadow(_key_name())
    if decision["decision"] != "promoted":
        raise ConflictError(f"Nothing changed: {decision['gate']['summary']}.", data=decision)
    return construct_response(HTTPStatus.OK, data=decision,
                              message=f"Promoted {decision['candidate']}: {decision['gate']['summary']}.")
