"""Request and response schemas; the OpenAPI document is generated from these same classes."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate


class NotBlank(validate.Regexp):
    """At least one character that is not whitespace.

    A pattern *found* in the value (``re.search``), as JSON Schema's ``pattern`` means it; marshmallow's
    ``Regexp`` anchors at the start. apispec writes the pattern into the document, and
    :mod:`tagifai_api.openapi` adds the ``minLength: 1`` it implies. Python's ``\\s`` and JavaScript's
    (which JSON Schema uses) disagree on a few characters (U+001C-U+001F, U+0085, U+FEFF): naming them
    too makes the pattern mean the same in both, so a text the document allows is never refused.
    """

    PATTERN = r"[^\s\x1c-\x1f\x85\ufeff]"
    min_length = 1

    def __init__(self, error: str = "Text must not be empty or only whitespace.") -> None:
        super().__init__(self.PATTERN, error=error)

    def __call__(self, value: str) -> str:
        if self.regex.search(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class TextSchema(Schema):
    """One text to tag: a project's title and description."""

    text = fields.String(required=True, metadata={"example": "Transfer learning with transformers for text classification."})


class PredictRequestSchema(Schema):
    """``{"texts": [{"text": "..."}, ...]}``."""

    texts = fields.List(fields.Nested(TextSchema), required=True)


def predict_request_schema(max_texts: int, max_text_length: int) -> PredictRequestSchema:
    """A request schema with this service's limits (they are settings, so built per app)."""

    class LimitedText(TextSchema):
        text = fields.String(
            required=True,
            validate=[NotBlank(), validate.Length(max=max_text_length)],
            metadata=TextSchema._declared_fields["text"].metadata,
        )

        class Meta:
            name = "Text"

    class LimitedPredictRequest(PredictRequestSchema):
        texts = fields.List(
            fields.Nested(LimitedText),
            required=True,
            validate=validate.Length(min=1, max=max_texts),
            metadata={"description": f"1 to {max_texts} texts, each at most {max_text_length} characters."},
        )

    return LimitedPredictRequest()


class PredictionSchema(Schema):
    """One prediction, in the order of the request's texts."""

    input_text = fields.String(metadata={"description": "The text as sent."})
    predicted_tag = fields.String(metadata={"description": "The tag; `other` when the model is not confident."})
    confidence = fields.Float(metadata={"description": "The model's top probability."})
    probabilities = fields.Dict(keys=fields.String(), values=fields.Float())
    low_confidence = fields.Boolean(metadata={"description": "The top probability fell below the threshold."})


class PredictDataSchema(Schema):
    """``data`` of a ``/predict`` answer."""

    model_version = fields.String()
    predictions = fields.List(fields.Nested(PredictionSchema))


class EnvelopeSchema(Schema):
    """Every response: the HTTP status and phrase, the request, and the data."""

    message = fields.String()
    method = fields.String()
    status_code = fields.Integer(data_key="status-code")
    timestamp = fields.DateTime()
    url = fields.String()
    request_id = fields.String(data_key="request-id")
    data = fields.Dict()


class PredictResponseSchema(EnvelopeSchema):
    """The envelope of a successful ``/predict``."""

    data = fields.Nested(PredictDataSchema)
