"""The registry's request body; the OpenAPI document is generated from it too."""

from __future__ import annotations

from marshmallow import Schema, fields, validate


class VersionRequestSchema(Schema):
    """``{"version": "<a version listed by GET /models>"}``."""

    version = fields.String(required=True, validate=validate.Length(min=1, max=128),
                            metadata={"description": "A version listed by GET /models.",
                                      "example": "v20261127T011631486627Z"})
