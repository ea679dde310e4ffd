"""Request and response schemas; the OpenAPI document is generated from these same classes."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate


class NotBlank(validate.Regexp):
    """At least one character that is not whitespace.

    A pattern *found* in the value (``re.search``), as JSON Schema's ``pattern`` means it; marshmallow's
    ``Regexp`` anchors at the start. apispec writes the pattern into the document, and
    :mod:`tagifai_api.web.openapi` adds the ``minLength: 1`` it implies. Python's ``\\s`` and JavaScript's
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


class StrictBoolean(fields.Boolean):
    """JSON ``true`` or ``false`` only: marshmallow's Boolean also takes ``1``, ``0`` and ``"yes"``,
    which the OpenAPI ``boolean`` type does not allow."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class TextSchema(Schema):
    """One text to tag: a project's title and description."""

    text = fields.String(required=True, metadata={"example": "Transfer learning with transformers for text classification."})


class PredictRequestSchema(Schema):
    """``{"texts": [{"text": "..."}, ...]}``."""

    texts = fields.List(fields.Nested(TextSchema), required=True)
    explain = StrictBoolean(
        load_default=False,
        metadata={"description": "Add each prediction's exact explanation (`explanation`); default false."},
    )


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


class WordSchema(Schema):
    """One piece of the text as sent, with its share of the explained score."""

    text = fields.String(metadata={"description": "`input_text[start:end]`."})
    start = fields.Integer(metadata={"description": "Offset in `input_text`, in Unicode code points."})
    end = fields.Integer(metadata={"description": "End offset (exclusive), in Unicode code points."})
    contribution = fields.Float(metadata={"description": "Sum of the contributions of the features this word "
                                                         "produced (its word feature and its character n-grams); "
                                                         "a feature several words produce is shared by "
                                                         "occurrence count."})
    dropped = fields.Boolean(metadata={"description": "The cleaning removed it, so the model never saw it "
                                                      "(contribution 0)."})
    reason = fields.String(metadata={"description": "Why it was dropped (only when dropped): `stop_word`, `link`, "
                                                    "`symbols` (punctuation, emoji) or `not_ascii` (letters the "
                                                    "model does not read)."})


class FeatureSchema(Schema):
    """One feature of the model, and its whole contribution to the explained score."""

    feature = fields.String(metadata={"description": "A word, or a character n-gram (spaces pad a word's ends)."})
    kind = fields.String(metadata={"description": "`word` or `char_wb` (character n-gram within a word)."})
    count = fields.Integer(metadata={"description": "Occurrences in the cleaned text."})
    contribution = fields.Float()


class TopFeaturesSchema(Schema):
    """The features that pushed the score most, each way."""

    positive = fields.List(fields.Nested(FeatureSchema), metadata={"description": "Largest first."})
    negative = fields.List(fields.Nested(FeatureSchema), metadata={"description": "Most negative first."})


class ExplanationSchema(Schema):
    """Why the model scored a text as it did: exact, ``intercept + sum(words' contributions) == score``."""

    tag = fields.String(metadata={"description": "The class explained: the top-probability class, also when "
                                                 "the low-confidence rule answered `other`."})
    score = fields.Float(metadata={"description": "That class's decision value (the linear model's score)."})
    intercept = fields.Float()
    words = fields.List(fields.Nested(WordSchema), metadata={
        "description": "Every piece of `input_text` but whitespace, in order: runs of letters or digits, runs "
                       "of punctuation or symbols, and links."})
    top = fields.Nested(TopFeaturesSchema)
    note = fields.String(metadata={"description": "Only when the answer is `other` for low confidence: says so."})


class PredictionSchema(Schema):
    """One prediction, in the order of the request's texts."""

    input_text = fields.String(metadata={"description": "The text as sent."})
    predicted_tag = fields.String(metadata={"description": "The tag; `other` when the model is not confident."})
    confidence = fields.Float(metadata={"description": "The model's top probability."})
    probabilities = fields.Dict(keys=fields.String(), values=fields.Float())
    low_confidence = fields.Boolean(metadata={"description": "The top probability fell below the threshold."})
    explanation = fields.Nested(ExplanationSchema, metadata={"description": "Only with `\"explain\": true`."})


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
