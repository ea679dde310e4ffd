"""Where the app keeps its :class:`ModelService` (``app.extensions``, never a module global)."""

from __future__ import annotations

from flask import current_app

from tagifai_api.serving.service import ModelService

EXTENSION = "tagifai"


def get_service() -> ModelService:
    """The current app's model service."""
    return current_app.extensions[EXTENSION]
