"""GET /demo: one page and two same-origin files, a strict Content-Security-Policy, open in every auth mode."""

from __future__ import annotations

import re

import pytest

from tagifai_api.demo import CONTENT_SECURITY_POLICY, STATIC
from tests.helpers import add_key

ASSETS = ["/demo/static/demo.js", "/demo/static/demo.css"]


def get(client, path):
    """GET, with the body read and the file behind it closed."""
    response = client.get(path)
    response.get_data()
    response.close()
    return response


def test_page_links_only_its_own_files(client, app):
    response = client.get("/demo")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert f'data-max-length="{app.config["MAX_TEXT_LENGTH"]}"' in page
    linked = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sorted(linked) == ["demo/static/demo.css", "demo/static/demo.js"]
    assert "<script>" not in page and "style=" not in page  # nothing inline for the policy to allow


@pytest.mark.parametrize("path", ["/demo", *ASSETS])
def test_strict_headers_on_the_page_and_its_files(client, path):
    response = get(client, path)
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == directives["style-src"] == directives["connect-src"] == "'self'"
    assert "unsafe" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_files_have_their_types_and_nothing_external(client):
    assert get(client, ASSETS[0]).mimetype == "text/javascript"
    assert get(client, ASSETS[1]).mimetype == "text/css"
    for file in STATIC.iterdir():
        text = file.read_text(encoding="utf-8")
        assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]", text), file.name
        assert "innerHTML" not in text and "eval(" not in text, file.name


@pytest.mark.parametrize("path", ["/demo/static/missing.js", "/demo/static/../__init__.py", "/demo/static/"])
def test_unknown_files_are_404_envelopes(client, path):
    response = client.get(path)
    assert response.status_code == 404 and response.get_json()["status-code"] == 404


def test_page_is_open_when_every_route_needs_a_key(make_app):
    app = make_app(AUTH="all", METRICS=False)
    add_key(app, "reader", "predict")
    client = app.test_client()
    for path in ["/demo", *ASSETS]:
        assert get(client, path).status_code == 200, path
    refused = client.post("/predict", json={"texts": [{"text": "x"}], "explain": True})
    assert refused.status_code == 401  # what the page then shows in words
    refused = client.post("/feedback", json={"feedback": [{"text": "x", "tag": "mlops"}]})
    assert refused.status_code == 401 and refused.get_json()["message"]


def test_page_has_a_labelled_correction_control(client):
    """'Wrong tag?' is a details box a keyboard opens, with a labelled list of tags, a submit button
    and a live region for what the service said; no inline handler for the policy to allow."""
    page = client.get("/demo").get_data(as_text=True)
    box = page[page.index('<details id="correct-box"'):page.index("</details>", page.index('id="correct-box"'))]
    assert "<summary>Wrong tag?" in box
    assert '<label for="correct-tag">' in box and '<select id="correct-tag"' in box
    assert '<button id="correct-submit" type="submit">' in box
    assert 'id="correct-status" class="status" role="status" aria-live="polite"' in box
    assert 'id="correct-error" class="error" role="alert" hidden' in box
    assert not re.search(r"\son[a-z]+=", page)  # no onclick= and the like
