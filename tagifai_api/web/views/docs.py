"""``/openapi.json`` and ``/docs``: the API description and Swagger UI, served without internet."""

from flask import Blueprint, Response, jsonify, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from tagifai_api.web.context import state

bp = Blueprint("docs", __name__)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>TagIfAI API docs</title>
  <link rel="stylesheet" href="docs/static/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/static/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/static/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true});
  </script>
</body>
</html>
"""


@bp.get("/openapi.json")
def openapi():
    """Return the OpenAPI 3 document."""
    return jsonify(state().openapi)


@bp.get("/docs")
def docs():
    """Return the interactive documentation page."""
    return Response(_PAGE, mimetype="text/html")


@bp.get("/docs/static/<path:filename>")
def static(filename: str):
    """Serve Swagger UI's own assets from the installed package."""
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
