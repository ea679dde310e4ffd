"""``GET /demo``: a page where a person tags a description and sees why, word by word.

One HTML page and two same-origin files (``static/demo.js``, ``static/demo.css``); nothing is
fetched from elsewhere, so it works offline. The page and its files are sent with a strict
Content-Security-Policy (scripts and styles from this origin only, requests only to this origin, no
inline code), and they are open in every auth mode, like ``/docs``: the page asks for a key and
sends it with its own requests to ``/predict``.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, render_template, send_from_directory

from tagifai_api.auth.guard import public

bp = Blueprint("demo", __name__, template_folder="templates")

STATIC = Path(__file__).resolve().parent / "static"

#: the page needs its own scripts and styles, and requests to this service; nothing else
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@bp.after_request
def _secure(response: Response) -> Response:
    response.headers.update(_HEADERS)
    return response


@bp.get("/demo")
@public
def demo():
    """Return the demo page."""
    page = render_template("demo.html", max_text_length=int(current_app.config["MAX_TEXT_LENGTH"]))
    return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})


@bp.get("/demo/static/<path:filename>")
@public
def static(filename: str):
    """Serve the page's script and style sheet."""
    return send_from_directory(STATIC, filename, max_age=300)
