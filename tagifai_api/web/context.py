"""Where the app keeps its :class:`ModelService` (``app.extensions``, never a module global), and
the version a request asks for."""

from __future__ import annotations

from flask import current_app, request

from tagifai_api.ml.artifacts import ModelVersion
from tagifai_api.serving.service import ModelService

EXTENSION = "tagifai"


def get_service() -> ModelService:
    """The current app's model service."""
    return current_app.extensions[EXTENSION]


def requested_version() -> str | None:
    """The version ``?version=`` names (``None``: the default, as for ``default`` or no parameter)."""
    return request.args.get("version") if request.query_string else None


def requested_model() -> ModelVersion:
    """The metadata of the version ``?version=`` names; its failures answer through the errors table."""
    return get_service().model_version(requested_version())
