"""The OpenAPI 3 document, generated from the marshmallow schemas the views validate with."""

from __future__ import annotations

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from tagifai_api.registry.schemas import VersionRequestSchema
from tagifai_api.web import schemas

_EXAMPLE = {
    "texts": [
        {"text": "Transfer learning with transformers for text classification."},
        {"text": "Generative adversarial networks for image generation."},
    ]
}


_VERSION_PARAM = {"name": "version", "in": "query", "required": False, "schema": {"type": "string"},
                  "description": "A model version (see /models); absent or `default`: the default version."}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": "Envelope"}}}


def _implied_min_length(self, field, ret: dict, **kwargs) -> dict:
    """``minLength`` for fields whose validators need at least some characters (:class:`schemas.NotBlank`),
    so the document states the bound the service enforces, not only the pattern that implies it."""
    least = max((getattr(v, "min_length", 0) for v in field.validators), default=0)
    return {"minLength": least} if least > ret.get("minLength", 0) else {}


def _version_errors() -> dict:
    return {"404": _error("Unknown version; data.valid lists the valid ones"),
            "409": _error("The version cannot be loaded; data.reason says why")}


def build_spec(max_texts: int, max_text_length: int, example_version: str | None = None,
               example_candidate: str | None = None) -> dict:
    """The document as a dict, with this app's limits in the request schema and real versions as
    examples (so "Try it out" finds them): the default it started with, and another one to shadow."""
    example_version = example_version or "v20261127T011631486627Z"
    example_candidate = example_candidate or example_version
    marshmallow_plugin = MarshmallowPlugin()
    spec = APISpec(
        title="TagIfAI API",
        version="1.0.0",
        openapi_version="3.0.3",
        info={"description": "Tags machine-learning project descriptions as computer-vision, mlops, "
                             "natural-language-processing or other. Every response is the same JSON envelope."},
        plugins=[marshmallow_plugin],
    )
    marshmallow_plugin.converter.add_attribute_function(_implied_min_length)
    spec.components.schema("Envelope", schema=schemas.EnvelopeSchema)
    spec.components.schema("PredictRequest", schema=schemas.predict_request_schema(max_texts, max_text_length))
    spec.components.schema("PredictResponse", schema=schemas.PredictResponseSchema)
    spec.components.schema("VersionRequest", schema=VersionRequestSchema)
    ok = {"description": "OK", "content": {"application/json": {"schema": "Envelope"}}}
    spec.path(path="/", operations={"get": {"summary": "Health check", "tags": ["health"], "responses": {"200": ok}}})
    spec.path(path="/health/live", operations={"get": {"summary": "Liveness probe", "tags": ["health"],
                                                       "responses": {"200": ok}}})
    spec.path(path="/health/ready", operations={"get": {
        "summary": "Readiness probe: 200 only with a loaded, warmed-up model", "tags": ["health"],
        "responses": {"200": ok, "503": _error("No model loaded")}}})
    spec.path(path="/performance", operations={"get": {
        "summary": "Test-split metrics of the served model", "tags": ["model"],
        "parameters": [{"name": "filter", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "A part of the report: overall, class, slices, or deeper with dots "
                                       "(class.mlops).", "example": "overall"}, _VERSION_PARAM],
        "responses": {"200": ok, **_version_errors(),
                      "404": _error("Unknown filter or version; the valid ones are listed")}}})
    spec.path(path="/args", operations={"get": {"summary": "All training arguments", "tags": ["model"],
                                                "parameters": [_VERSION_PARAM],
                                                "responses": {"200": ok, **_version_errors()}}})
    spec.path(path="/args/{arg}", operations={"get": {
        "summary": "One training argument", "tags": ["model"],
        "parameters": [{"name": "arg", "in": "path", "required": True, "schema": {"type": "string"},
                        "example": "threshold"}, _VERSION_PARAM],
        "responses": {"200": ok, **_version_errors(), "404": _error("Unknown argument or version")}}})
    spec.path(path="/models", operations={"get": {
        "summary": "Every model version (newest first), the default, the shadow and its agreement so far",
        "tags": ["registry"], "responses": {"200": ok}}})
    spec.path(path="/models/{version}", operations={"get": {
        "summary": "One version's manifest, args and performance", "tags": ["registry"],
        "parameters": [{"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
                        "description": "A version listed by GET /models (`default` names the default).",
                        "example": example_version}],
        "responses": {"200": ok, **_version_errors()}}})
    version_body = {"required": True, "content": {"application/json": {"schema": "VersionRequest",
                                                                      "example": {"version": example_version}}}}
    body_errors = {"400": _error("Malformed JSON"), "415": _error("Not JSON"), "422": _error("Invalid body")}
    switched = {"description": "Switched: data.previous and data.default",
                "content": {"application/json": {"schema": "Envelope"}}}
    spec.path(path="/models/default", operations={"get": {
        "summary": "The default version's manifest, args and performance", "tags": ["registry"],
        "responses": {"200": ok, "404": _error("No default version"), "409": _error("The default is damaged")}},
        "put": {
        "summary": "Verify a version (checksums, a warm-up prediction), then make it the default of every worker "
                   "and replica within seconds", "tags": ["registry"], "requestBody": version_body,
        "responses": {"200": switched, "404": _error("Unknown version; data.valid lists the valid ones"),
                      "409": _error("The version failed verification, or the service pins its version; "
                                    "nothing changed"),
                      **body_errors}}})
    spec.path(path="/models/default/rollback", operations={"post": {
        "summary": "Make the previous default the default again", "tags": ["registry"],
        "responses": {"200": switched, "409": _error("No earlier default, or it failed verification; nothing changed")}}})
    spec.path(path="/models/shadow", operations={
        "get": {"summary": "The shadow version (or null) and its agreement with the served answers so far",
                "tags": ["registry"], "responses": {"200": ok}},
        "put": {"summary": "Verify a version, then score every /predict with it too, in the background",
                "tags": ["registry"],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": "VersionRequest", "example": {"version": example_candidate}}}},
                "responses": {"200": ok, "404": _error("Unknown version; data.valid lists the valid ones"),
                              "409": _error("The version failed verification, or is the default; nothing changed"),
                              **body_errors}},
        "delete": {"summary": "Stop shadow scoring", "tags": ["registry"], "responses": {"200": ok}}})
    spec.path(path="/predict", operations={"post": {
        "summary": "Tag texts", "tags": ["model"], "parameters": [_VERSION_PARAM],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": "PredictRequest", "example": _EXAMPLE}}},
        "responses": {
            "200": {"description": "Predictions in input order",
                    "content": {"application/json": {"schema": "PredictResponse"}}},
            "400": _error("Malformed JSON"),
            "413": _error("Body too large"),
            "415": _error("Not JSON"),
            "422": _error("Invalid body; data.errors gives each field path and message"),
            **_version_errors(),
            "503": _error("No model loaded, or the worker's queue is full (see Retry-After)"),
            "504": _error("Waited too long in the queue"),
        }}})
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer",
        "description": "An API key from `python -m tagifai_api keys create` (also accepted as `X-API-Key`)."})
    return spec.to_dict()


def secure(spec: dict, requirements: dict[tuple[str, str], str]) -> dict:
    """Mark the operations that need a key (``{(path, method): role}``) with the bearer scheme and
    their 401/403 answers, so Swagger UI's "Authorize" sends the key where it is needed."""
    def refused(description: str) -> dict:  # written after apispec's pass: a resolved reference
        return {"description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}}

    for (path, method), role in requirements.items():
        operation = spec["paths"].get(path, {}).get(method)
        if operation is None:
            continue
        operation["security"] = [{"bearerAuth": []}]
        operation["responses"]["401"] = refused("No API key, or an unknown one (see WWW-Authenticate)")
        if role != "predict":
            operation["responses"]["403"] = refused(f"The key is not a {role} key, or no {role} key exists")
    return spec
