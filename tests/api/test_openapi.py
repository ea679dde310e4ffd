"""The OpenAPI document comes from the registered routes: a view's docstring declares its operations,
and the auth guard's registration decides which of them are secured."""

from __future__ import annotations

import re

import pytest
from flask import Blueprint
from marshmallow import Schema, fields

from tagifai_api.auth import guard
from tagifai_api.auth.guard import require_role
from tagifai_api.web import openapi
from tagifai_api.web.responses import construct_response

DOCUMENTED = {"/", "/health/live", "/health/ready", "/performance", "/args", "/args/{arg}", "/predict", "/models",
              "/models/{version}", "/models/default", "/models/default/rollback", "/models/shadow",
              "/models/history", "/models/{version}/quality", "/models/{version}/drift", "/feedback",
              "/models/retrain", "/jobs/{job_id}", "/models/default/promote-shadow"}
ENVELOPE = {"$ref": "#/components/schemas/Envelope"}


class WidgetRequestSchema(Schema):
    """A body named by its import path in the docstring, as the registry's views name theirs."""

    size = fields.Integer(required=True)


widgets = Blueprint("widgets_test", __name__)


@widgets.put("/test/widgets/<name>")
@require_role("admin")
def put_widget(name: str):
    """Store a widget.
    ---
    put:
      summary: Store a widget
      tags: [widgets]
      parameters:
        - {name: name, in: path, schema: {type: string}, example: $default_version}
        - version
      requestBody:
        required: true
        content:
          application/json:
            schema: tests.api.test_openapi.WidgetRequestSchema
            example: {size: 3, made_with: $other_version}
      responses:
        200: Stored
        409: "Taken: data.owner says by whom"
    """
    return construct_response(200)


@widgets.get("/test/widgets")
def list_widgets():
    """List the widgets (no YAML: not in the document)."""
    return construct_response(200)


@pytest.fixture
def keys_file(tmp_path):
    return tmp_path / "api_keys.json"


def test_a_route_documented_in_its_docstring_joins_the_document(make_app, keys_file):
    app = make_app(AUTH="admin", API_KEYS_FILE=str(keys_file), METRICS=False)
    app.register_blueprint(widgets)
    spec = openapi.build_spec(app, 3, 50, "v1", "v2", guard.key_requirements(app))

    assert "/test/widgets" not in spec["paths"]
    assert set(spec["paths"]["/test/widgets/{name}"]) == {"put"}
    operation = spec["paths"]["/test/widgets/{name}"]["put"]
    assert operation["summary"] == "Store a widget" and operation["tags"] == ["widgets"]
    assert operation["parameters"] == [
        {"name": "name", "in": "path", "schema": {"type": "string"}, "example": "v1", "required": True},
        openapi.PARAMETERS["version"]]
    body = operation["requestBody"]["content"]["application/json"]
    assert body == {"schema": {"$ref": "#/components/schemas/WidgetRequest"}, "example": {"size": 3, "made_with": "v2"}}
    assert spec["components"]["schemas"]["WidgetRequest"]["required"] == ["size"]
    responses = operation["responses"]
    assert list(responses) == ["200", "409", "401", "403"]  # an admin route: the guard's answers added
    assert responses["200"]["description"] == "Stored"
    assert responses["409"]["description"] == "Taken: data.owner says by whom"
    assert all(r["content"]["application/json"]["schema"] == ENVELOPE for r in responses.values())
    assert operation["security"] == [{"bearerAuth": []}]


def test_a_documented_method_the_route_does_not_answer_is_refused(make_app):
    app = make_app(METRICS=False)
    wrong = Blueprint("wrong_test", __name__)

    @wrong.get("/test/wrong")
    def wrong_method():
        """Answer GET, document POST.
        ---
        post:
          responses:
            200: OK
        """

    app.register_blueprint(wrong)
    with pytest.raises(ValueError, match=r"wrong_method documents POST /test/wrong, but the route answers GET"):
        openapi.build_spec(app, 3, 50)


@pytest.mark.parametrize("mode", ["off", "admin", "all"])
def test_secured_operations_are_the_ones_that_need_a_key(make_app, keys_file, mode):
    app = make_app(AUTH=mode, API_KEYS_FILE=str(keys_file), METRICS=False)
    spec = app.extensions["tagifai"].openapi
    assert set(spec["paths"]) == DOCUMENTED  # the docs, the demo and /metrics stay out
    urls = app.url_map.bind("localhost")
    endpoints = set()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            endpoint, _ = urls.match(re.sub(r"\{\w+\}", "x", path), method=method.upper())
            endpoints.add(endpoint)
            role = guard.needed_role(app, endpoint, mode)
            assert ("security" in operation) == bool(role), (mode, method, path)
            assert ("401" in operation["responses"]) == bool(role)
            assert ("403" in operation["responses"]) == (role not in (None, "predict"))
    assert endpoints == {e for e, view in app.view_functions.items() if "---" in (view.__doc__ or "")}


def test_examples_are_the_apps_real_versions(make_app, registry_root):
    root, default, candidate = registry_root
    paths = make_app(ARTIFACTS_DIR=str(root), METRICS=False).extensions["tagifai"].openapi["paths"]
    version_body = "requestBody", "content", "application/json", "example", "version"

    def at(node, keys):
        for key in keys:
            node = node[key]
        return node

    assert at(paths["/models/default"]["put"], version_body) == default
    assert at(paths["/models/shadow"]["put"], version_body) == candidate
    assert paths["/models/{version}"]["get"]["parameters"][0]["example"] == default


def test_docstrings_parsed_once_still_give_each_document_its_own_operations(make_app):
    app = make_app(METRICS=False)
    first = openapi.build_spec(app, 3, 50, "v1", "v2")
    second = openapi.build_spec(app, 7, 50, "v3", "v4", {"registry.set_default": "admin"})
    assert second["paths"]["/models/{version}"]["get"]["parameters"][0]["example"] == "v3"
    assert "security" in second["paths"]["/models/default"]["put"]
    assert openapi.build_spec(app, 3, 50, "v1", "v2") == first
