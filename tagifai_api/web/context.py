"""Where the app keeps its :class:`ModelService` (``app.extensions``, never a module global), and
the version a request asks for, with its failures as envelope errors."""

from __future__ import annotations

from flask import current_app, request

from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.ml.versions import UnknownVersionError
from tagifai_api.serving.service import ModelService, ModelUnavailableError, Served
from tagifai_api.web.errors import ConflictError, ModelNotReadyError, NotFoundError

EXTENSION = "tagifai"


def get_service() -> ModelService:
    """The current app's model service."""
    return current_app.extensions[EXTENSION]


def get_served(version: str | None = None) -> Served:
    """A loaded version (``None``: the default), or the envelope error that says why not.

    Raises:
        NotFoundError: no such version (404, listing the valid ones).
        ConflictError: it exists but cannot be loaded (409, with the reason).
        ModelNotReadyError: no default is loaded (503).
    """
    try:
        return get_service().get(version)
    except ModelUnavailableError as exc:
        raise ModelNotReadyError(f"The model is not loaded: {exc}") from None
    except UnknownVersionError as exc:
        raise unknown_version(exc) from None
    except ArtifactError as exc:
        raise ConflictError(f"Model version {version!r} cannot be loaded: {exc}",
                            data={"version": version, "reason": str(exc)}) from None


def unknown_version(exc: UnknownVersionError) -> NotFoundError:
    """The 404 for a version that does not exist, listing the valid ones."""
    return NotFoundError(f"Unknown model version {exc.version!r}. Valid versions: {', '.join(exc.valid) or 'none'}.",
                         data={"valid": exc.valid})


def requested() -> Served:
    """The version ``?version=`` names (``default`` or absent: the default)."""
    return get_served(request.args.get("version") if request.query_string else None)
