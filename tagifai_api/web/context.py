"""What the app keeps for its views and hooks: one typed object under ``app.extensions["tagifai"]``
(Flask's place for per-app state, never a module global), and the version a request asks for."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app, request
from marshmallow import Schema

from tagifai_api.ml.artifacts import ModelVersion
from tagifai_api.serving.service import ModelService
from tagifai_api.telemetry.metrics import HttpMetrics, ModelMetrics

EXTENSION = "tagifai"


@dataclass(eq=False)
class Tagifai:
    """The app's model service, request schema, metrics and OpenAPI document."""

    service: ModelService
    predict_schema: Schema
    metrics: ModelMetrics | None = None
    http_metrics: HttpMetrics | None = None
    #: prometheus_flask_exporter's object, which serves /metrics
    exporter: object | None = None
    openapi: dict = field(default_factory=dict)

    def close(self) -> None:
        """Stop the service's threads (tests build many apps in one process)."""
        self.service.close()


def state() -> Tagifai:
    """The current app's :class:`Tagifai`."""
    return current_app.extensions[EXTENSION]


def get_service() -> ModelService:
    """The current app's model service."""
    return current_app.extensions[EXTENSION].service


def requested_version() -> str | None:
    """The version ``?version=`` names (``None``: the default, as for ``default`` or no parameter)."""
    return request.args.get("version") if request.query_string else None


def requested_model() -> ModelVersion:
    """The metadata of the version ``?version=`` names; its failures answer through the errors table."""
    return get_service().model_version(requested_version())
