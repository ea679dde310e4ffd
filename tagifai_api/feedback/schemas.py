"""The bodies of ``POST /feedback``; the OpenAPI document is generated from them too."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from tagifai_api.web.schemas import NotBlank

#: most items in one request
MAX_ITEMS = 100
#: largest index: the store's position column is a 32-bit integer (and orjson reads an integer past
#: 2**64 as a float, which a bound far below it keeps from being refused as "not an integer")
MAX_INDEX = 2**31 - 1
#: longest tag (the store's column); which tags are right depends on the version, so the view checks that
MAX_TAG_LENGTH = 64


def no_nul(value: str) -> str:
    """Refuse NUL: PostgreSQL's text columns cannot hold it, so a correction carrying one failed in the
    store, a 503 for what is bad input."""
    if "\x00" in value:
        raise ValidationError("Must not contain the NUL character (\\u0000).")
    return value


class FeedbackItemSchema(Schema):
    """One correction: of a logged prediction (``request_id`` and ``index``) or of any ``text``."""

    request_id = fields.String(validate=[validate.Length(min=1, max=128), no_nul],
                               metadata={"description": "The X-Request-ID of a /predict answer.",
                                         "example": "a39ec4f6758f45fc0000000000000000"})
    index = fields.Integer(load_default=0, strict=True, validate=validate.Range(min=0, max=MAX_INDEX),
                           metadata={"description": "Which text of that request (default 0)."})
    text = fields.String(validate=[NotBlank(), no_nul], metadata={"description": "Any text, tagged by hand.",
                                   "example": "Transfer learning with transformers for text classification."})
    tag = fields.String(required=True, validate=[validate.Length(min=1, max=MAX_TAG_LENGTH), no_nul],
                        metadata={"description": "The right tag: one of the classes of the version that made the "
                                                 "prediction (for a text, the default's).", "example": "mlops"})

    @validates_schema
    def one_subject(self, data: dict, **kwargs) -> None:
        if ("request_id" in data) == ("text" in data):
            raise ValidationError("Give either request_id (and index) or text, not both.", "_schema")


class FeedbackRequestSchema(Schema):
    """``{"feedback": [{"request_id": "...", "index": 0, "tag": "mlops"} | {"text": "...", "tag": "mlops"}, ...]}``."""

    feedback = fields.List(fields.Nested(FeedbackItemSchema), required=True,
                           validate=validate.Length(min=1, max=MAX_ITEMS),
                           metadata={"description": f"1 to {MAX_ITEMS} corrections; texts as long as /predict takes."})


class QualityQuerySchema(Schema):
    """``GET /models/<version>/quality?days=7``: the recent window."""

    days = fields.Float(load_default=7.0, validate=validate.Range(min=0.01, max=3650),
                        metadata={"description": "The recent window, in days (0.01 to 3650)."})
