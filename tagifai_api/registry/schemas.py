"""The registry's request bodies; the OpenAPI document is generated from them too."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

_REASON = fields.String(load_default=None, validate=validate.Length(max=500),
                        metadata={"description": "Why, recorded in the audit log (GET /models/history).",
                                  "example": "better F1 on the new data"})


class VersionRequestSchema(Schema):
    """``{"version": "<a version listed by GET /models>", "reason": "<optional, for the audit log>"}``."""

    version = fields.String(required=True, validate=validate.Length(min=1, max=128),
                            metadata={"description": "A version listed by GET /models.",
                                      "example": "v20261127T011631486627Z"})
    reason = _REASON


class ReasonSchema(Schema):
    """``{"reason": "<optional, for the audit log>"}``: a rollback's body, which may be empty."""

    reason = _REASON


class HistoryQuerySchema(Schema):
    """``GET /models/history?limit=``."""

    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
