"""The OpenAPI 3 document, generated from the app's registered routes and the marshmallow schemas.

A view documents its own operations in YAML after a ``---`` line in its docstring (read by apispec's
Flask plugin), naming its schemas there; a view without one (the docs, the demo, ``/metrics``) stays
out of the document. So a new route is declared once, where it is registered. Three short forms
keep those blocks short (:class:`_ShortForms` expands them):

- a response given as text is its description, answered in the Envelope (every answer is one);
- a parameter given as a name is one of :data:`PARAMETERS`;
- ``$default_version`` and ``$other_version`` stand for real versions of this app's artifacts, so
  that "Try it out" finds them; ``$default_classes`` for the default's classes (a key given it is left
  out when no model is loaded).

The same walk over the routes marks the operations that need a key in the app's mode (the
``requirements`` of :func:`tagifai_api.auth.guard.key_requirements`) with the bearer scheme and
their 401/403 answers, so Swagger UI's "Authorize" sends the key where it is needed.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence

from apispec import APISpec, BasePlugin, yaml_utils
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec_webframeworks.flask import FlaskPlugin
from flask import Flask

from tagifai_api.web import schemas

#: shared parameters, named in a view's ``parameters`` list
PARAMETERS = {
    "version": {"name": "version", "in": "query", "required": False, "schema": {"type": "string"},
                "description": "A model version (see /models); absent or `default`: the default version."},
}
#: a stand-in for the versions when no model is loaded
_FALLBACK_VERSION = "v20261127T011631486627Z"
#: a placeholder's value that leaves its key out
_ABSENT = object()


def _envelope(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": "Envelope"}}}


def _implied_min_length(self, field, ret: dict, **kwargs) -> dict:
    """``minLength`` for fields whose validators need at least some characters (:class:`schemas.NotBlank`),
    so the document states the bound the service enforces, not only the pattern that implies it."""
    least = max((getattr(v, "min_length", 0) for v in field.validators), default=0)
    return {"minLength": least} if least > ret.get("minLength", 0) else {}


@functools.cache
def _docstring_operations(docstring: str) -> dict:
    return yaml_utils.load_operations_from_docstring(docstring)


class _FlaskPlugin(FlaskPlugin):
    """apispec's Flask plugin, with a docstring's YAML parsed once a process rather than once an app:
    PyYAML parses in pure Python, which made building the document ~5x slower (13-20 ms against 3),
    paid by every app (a worker once, the tests hundreds of times)."""

    def path_helper(self, path=None, operations=None, parameters=None, *, view=None, app=None, **kwargs):
        if hasattr(view, "view_class"):  # a MethodView: its methods' docstrings, as the plugin reads them
            return super().path_helper(path, operations, parameters, view=view, app=app, **kwargs)
        operations.update(copy.deepcopy(_docstring_operations(view.__doc__ or "")))
        return self.flaskpath2openapi(self._rule_for_view(view, app=app).rule)


class _ShortForms(BasePlugin):
    """Expands the short forms of the views' YAML, checks each documented method is one the route
    answers, and marks the operations that need a key; before the marshmallow plugin and apispec
    resolve schema names, so what it writes is resolved too."""

    def __init__(self, placeholders: Mapping[str, object]) -> None:
        self.placeholders = placeholders

    def _fill(self, node):
        if isinstance(node, dict):
            filled = ((key, self._fill(value)) for key, value in node.items())
            return {key: value for key, value in filled if value is not _ABSENT}
        if isinstance(node, list):
            return [self._fill(item) for item in node]
        return self.placeholders.get(node, node) if isinstance(node, str) else node

    def operation_helper(self, path=None, operations=None, *, view=None, methods=frozenset(), role=None,
                         **kwargs) -> None:
        for method in list(operations):
            if method.startswith("x-"):
                continue
            if method.upper() not in methods:
                raise ValueError(f"{view.__module__}.{view.__qualname__} documents {method.upper()} {path}, "
                                 f"but the route answers {', '.join(sorted(methods))}")
            operation = operations[method]
            if "parameters" in operation:
                operation["parameters"] = [PARAMETERS[p] if isinstance(p, str) else p for p in operation["parameters"]]
            operation["responses"] = {code: _envelope(r) if isinstance(r, str) else r
                                      for code, r in operation.get("responses", {}).items()}
            operation = operations[method] = self._fill(operation)  # a copy: PARAMETERS are shared
            if role:
                operation["responses"]["401"] = _envelope("No API key or token, or one not accepted (see WWW-Authenticate)")
                if role != "predict":
                    operation["responses"]["403"] = _envelope(f"The key or token does not have the {role} role")
                operation["security"] = [{"bearerAuth": []}]


def build_spec(app: Flask, max_texts: int, max_text_length: int, example_version: str | None = None,
               example_candidate: str | None = None, requirements: Mapping[str, str] | None = None,
               default_classes: Sequence[str] | None = None) -> dict:
    """The document as a dict: every registered view with YAML in its docstring, this app's limits in
    the request schema, real versions as examples (the default it started with, and another one to
    shadow), the default's classes where a tag must be one of them, and the bearer scheme on the
    endpoints in ``requirements`` (``{endpoint: role}``)."""
    example_version = example_version or _FALLBACK_VERSION
    placeholders = {"$default_version": example_version, "$other_version": example_candidate or example_version,
                    "$default_classes": list(default_classes) if default_classes else _ABSENT}
    requirements = requirements or {}
    marshmallow_plugin = MarshmallowPlugin()
    spec = APISpec(
        title="TagIfAI API",
        version="1.0.0",
        openapi_version="3.0.3",
        info={"description": "Tags machine-learning project descriptions as computer-vision, mlops, "
                             "natural-language-processing or other. Every response is the same JSON envelope."},
        plugins=[_FlaskPlugin(), _ShortForms(placeholders), marshmallow_plugin],
    )
    marshmallow_plugin.converter.add_attribute_function(_implied_min_length)
    spec.components.schema("Envelope", schema=schemas.EnvelopeSchema)
    spec.components.schema("PredictRequest", schema=schemas.predict_request_schema(max_texts, max_text_length))
    spec.components.schema("PredictResponse", schema=schemas.PredictResponseSchema)
    for endpoint, view in app.view_functions.items():
        if "---" not in (view.__doc__ or ""):
            continue
        methods = {method for rule in app.url_map.iter_rules(endpoint) for method in rule.methods}
        spec.path(view=view, app=app, methods=methods, role=requirements.get(endpoint))
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer",
        "description": "An API key from `python -m tagifai_api keys create` (also accepted as `X-API-Key`), or, "
                       "where the service accepts its identity provider's tokens (`TAGIFAI_OIDC_ISSUER`), an "
                       "access token (a JWT) from it: paste either here."})
    return spec.to_dict()
