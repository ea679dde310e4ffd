"""The read-only routes: /, /performance, /args."""

import json

import pytest

from tests.helpers import check_envelope


def test_index(client, app):
    body = check_envelope(client.get("/"), 200)
    assert body["message"] == "OK"
    assert body["url"] == "http://localhost/"
    assert body["data"] == {"model_version": app.extensions["tagifai"].service.model.version}


def test_performance(client, artifacts_dir, app):
    body = check_envelope(client.get("/performance"), 200)
    stored = json.loads((app.extensions["tagifai"].service.model.path / "performance.json").read_text())
    assert body["data"]["performance"] == stored


@pytest.mark.parametrize(("selector", "keys"), [("overall", {"precision", "recall", "f1", "num_samples"}),
                                                ("class", None), ("slices", {"short_text", "nlp_cnn"})])
def test_performance_filter(client, selector, keys, app):
    body = check_envelope(client.get(f"/performance?filter={selector}"), 200)
    part = body["data"]["performance"]
    assert set(part) == (keys or set(app.extensions["tagifai"].service.model.labels))


def test_performance_filter_goes_deeper_with_dots(client, app):
    body = check_envelope(client.get("/performance?filter=class.mlops.f1"), 200)
    assert body["data"]["performance"] == app.extensions["tagifai"].service.model.performance["class"]["mlops"]["f1"]


@pytest.mark.parametrize("selector", ["nope", "class.nope", "overall.f1.deeper"])
def test_unknown_filter_is_404_naming_the_valid_ones(client, selector):
    body = check_envelope(client.get(f"/performance?filter={selector}"), 404)
    assert "Valid filter" in body["message"]
    if selector == "nope":
        assert body["data"]["valid"] == ["class", "overall", "slices"]
    if selector == "class.nope":
        assert "class.mlops" in body["data"]["valid"]


def test_args(client, app):
    body = check_envelope(client.get("/args"), 200)
    assert body["data"]["args"] == app.extensions["tagifai"].service.model.args
    assert "threshold" in body["data"]["args"]


def test_one_arg(client, app):
    body = check_envelope(client.get("/args/threshold"), 200)
    assert body["data"] == {"threshold": app.extensions["tagifai"].service.model.args["threshold"]}


def test_unknown_arg_is_404(client):
    body = check_envelope(client.get("/args/nope"), 404)
    assert "threshold" in body["data"]["valid"]
    assert "'nope'" in body["message"]


def test_url_is_the_one_the_client_used_behind_a_proxy(make_app):
    client = make_app(PROXY_COUNT=1).test_client()
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.org", "X-Forwarded-For": "10.1.2.3"}
    body = check_envelope(client.get("/args?x=1", headers=headers), 200)
    assert body["url"] == "https://api.example.org/args?x=1"


def test_proxy_headers_ignored_when_no_proxy_is_trusted(client):
    """The default trusts no proxy: a client reaching Gunicorn directly cannot set the envelope's url."""
    body = client.get("/", headers={"X-Forwarded-Host": "evil.example"}).get_json()
    assert body["url"] == "http://localhost/"


def test_url_is_the_requests_own_whichever_host_path_and_proxy_headers_come(make_app):
    """The envelope's url is remembered per host, path and scheme: never one request's for another."""
    from flask import request

    app = make_app(PROXY_COUNT=1)
    seen = []
    app.after_request(lambda response: seen.append(request.url) or response)
    client = app.test_client()
    cases = [({}, "/"), ({"Host": "a.example"}, "/"), ({"Host": "b.example:8080"}, "/"),
             ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "c.example"}, "/"),
             ({"X-Forwarded-Prefix": "/api"}, "/"), ({}, "/args/caf%C3%A9"), ({}, "/args/%E2%82%AC%20x"), ({}, "/")]
    urls = set()
    for _ in range(2):  # the second time from what was remembered
        for headers, path in cases:
            seen.clear()
            body = client.get(path, headers=headers).get_json()
            assert body["url"] == seen[0], (headers, path)
            urls.add(body["url"])
    assert "https://c.example/" in urls and "http://localhost/api/" in urls and "http://localhost/args/café" in urls
    assert len(urls) == len(cases) - 1  # "/" twice


def test_request_id_is_accepted_or_generated(client):
    r = client.get("/", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123" and r.get_json()["request-id"] == "abc-123"
    r = client.get("/", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["X-Request-ID"] != "bad id with spaces" and len(r.headers["X-Request-ID"]) == 32
