"""The one response envelope every route answers with."""

from __future__ import annotations

import json
from http import HTTPStatus

import orjson
from flask import Response, g, request
from flask.globals import request_ctx
from flask.json.provider import DefaultJSONProvider

from tagifai_api.web import envelope

REQUEST_ID_HEADER = "X-Request-ID"


class OrjsonProvider(DefaultJSONProvider):
    """Request bodies parsed by orjson: faster, and strict where ``json`` is lax. Nesting deeper
    than 1024 levels or a lone surrogate is a ``ValueError`` (so a 400), not a ``RecursionError``
    or a string no encoder can write back."""

    def loads(self, s, **kwargs):
        return orjson.loads(s)


def _dumps(body: dict) -> bytes:
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)  # marshmallow keys list errors by index
    except TypeError:  # e.g. a lone surrogate that a URL or header smuggled in: escape it instead
        return json.dumps(body, separators=(",", ":"), default=str).encode()


_URLS: dict[tuple, str] = {}
_URLS_MAX = 64


def _request_url() -> str:
    """``request.url``, remembered for the few URLs without a query string a service is called on:
    werkzeug decodes and re-quotes it on every request. It depends on these environ values only
    (the app trusts no host list)."""
    environ = request.environ
    if environ.get("QUERY_STRING"):
        return request.url
    key = (environ["wsgi.url_scheme"], environ.get("HTTP_HOST"), environ.get("SERVER_NAME"),
           environ.get("SERVER_PORT"), environ.get("SCRIPT_NAME"), environ.get("PATH_INFO"))
    url = _URLS.get(key)
    if url is None:
        url = request.url
        if len(_URLS) >= _URLS_MAX:  # start over rather than stop: early 404 probes must not crowd out /predict
            _URLS.clear()
        _URLS[key] = url
    return url


def construct_response(
    status: int,
    data: dict | None = None,
    message: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Wrap ``data`` in the envelope: message, method, status-code, timestamp, url, request-id, data.

    ``status-code`` is always the HTTP status of the response itself; ``message`` defaults to
    the HTTP phrase; ``data`` is left out when there is none.
    """
    body = envelope.body(status, message or HTTPStatus(status).phrase, request.method, _request_url(),
                         g.get("request_id"), data)
    return Response(
        _dumps(body),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def secure_headers(response: Response) -> Response:
    """Every answer: ``nosniff`` (a browser never runs JSON or text as something else), and, unless
    the view chose one (static assets, the demo page), ``Cache-Control: no-store``: predictions,
    keys' refusals and admin answers must not be kept by a browser or a shared cache. An
    ``after_request`` hook on every request, so it looks at the names once: werkzeug's ``in`` raises
    and catches an exception for each absent header, which cost the hook about 5 µs a request."""
    headers = response.headers
    present = {name.lower() for name, _ in headers}
    if "x-content-type-options" not in present:
        headers.add("X-Content-Type-Options", "nosniff")
    if "cache-control" not in present:
        headers.add("Cache-Control", "no-store")
    return response


def options_response() -> Response:
    """``OPTIONS`` answers in the envelope too (Flask's default is an empty HTML body)."""
    methods = sorted(request_ctx.url_adapter.allowed_methods())
    return construct_response(HTTPStatus.OK, data={"allow": methods}, headers={"Allow": ", ".join(methods)})
