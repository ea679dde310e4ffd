"""nginx with deploy/nginx/tagifai.conf in front of real Gunicorn: what a client behind the proxy sees."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests import helpers

CONF = helpers.ROOT / "deploy" / "nginx" / "tagifai.conf"

pytestmark = pytest.mark.integration


def render(tmp: Path, upstream: str, port: int, max_body: str | None = None) -> Path:
    """Write the shipped server config with this run's addresses, plus a minimal nginx.conf around it.

    Only the values the config marks as deployment-specific change; everything under test is the
    file as shipped.
    """
    text = CONF.read_text()
    text, n_up = re.subn(r"^(\s+)server tagifai:8000\b", rf"\g<1>server {upstream}", text, flags=re.M)
    text, n_listen = re.subn(r"^(\s+)listen 80;", rf"\g<1>listen 127.0.0.1:{port};", text, flags=re.M)
    assert n_up == 1 and n_listen == 1, "deploy/nginx/tagifai.conf lost its upstream or listen line"
    if max_body is not None:
        text, n_body = re.subn(r"^(\s+)client_max_body_size \S+;", rf"\g<1>client_max_body_size {max_body};", text,
                                 flags=re.M)
        assert n_body == 1
    (tmp / "tagifai.conf").write_text(text)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"{user}worker_processes 1;\n"
        "events { worker_connections 128; }\n"
        "http {\n"
        f"    access_log {tmp / 'access.log'};\n"
        f"{temp_paths}\n"
        f"    include {tmp / 'tagifai.conf'};\n"
        "}\n"
    )
    return tmp / "nginx.conf"


@contextmanager
def nginx(tmp: Path, upstream: str, max_body: str | None = None) -> Iterator[str]:
    """Run nginx in the foreground on a free loopback port; yield its base URL."""
    binary = helpers.require_binary("nginx")
    tmp.mkdir(parents=True, exist_ok=True)
    port = helpers.free_port()
    conf = render(tmp, upstream, port, max_body)
    cmd = [binary, "-e", "stderr", "-c", str(conf), "-p", str(tmp),
           "-g", f"daemon off; pid {tmp / 'nginx.pid'}; error_log stderr;"]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=20)
    assert check.returncode == 0, check.stderr
    log = open(tmp / "nginx.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(tmp / 'nginx.log').read_text()}")
            try:
                requests.get(f"{base}/health/live", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        helpers.stop(proc)
        log.close()


@pytest.fixture(scope="module")
def stack(artifacts_dir, tmp_path_factory):
    """Gunicorn (one worker) behind nginx, with a 64 KiB body limit so the 413 test stays small."""
    with helpers.gunicorn(artifacts_dir, workers=1, env={"TAGIFAI_PROXY_COUNT": "1"}) as api:
        with nginx(tmp_path_factory.mktemp("nginx"), f"127.0.0.1:{api.port}", max_body="64k") as base:
            yield base


def assert_envelope(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert helpers.ENVELOPE <= body.keys()
    assert body["status-code"] == status
    assert body["request-id"] == response.headers["X-Request-ID"]
    return body


def test_predict_through_nginx_reports_the_clients_url(stack):
    r = requests.post(f"{stack}/predict", json={"texts": [{"text": "Transformers for text classification."}]},
                      timeout=10)
    body = assert_envelope(r, 200)
    assert body["url"] == f"{stack}/predict"
    assert body["method"] == "POST"
    assert body["data"]["predictions"][0]["predicted_tag"] == "natural-language-processing"


def test_clients_cannot_forge_the_forwarded_headers(stack):
    forged = {"X-Forwarded-Prefix": "/evil", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}
    body = assert_envelope(requests.get(f"{stack}/", headers=forged, timeout=10), 200)
    assert body["url"] == f"{stack}/"


def test_query_string_survives_the_proxy(stack):
    body = assert_envelope(requests.get(f"{stack}/performance?filter=overall", timeout=10), 200)
    assert body["url"] == f"{stack}/performance?filter=overall"


def test_request_id_passes_through_both_ways(stack):
    r = requests.get(f"{stack}/health/ready", headers={"X-Request-ID": "trace-42.a"}, timeout=10)
    assert assert_envelope(r, 200)["request-id"] == "trace-42.a"
    assert r.headers["X-Request-ID"] == "trace-42.a"


def test_nginx_generates_the_request_id_the_app_uses(stack):
    r = requests.get(f"{stack}/", headers={"X-Request-ID": "not valid!"}, timeout=10)
    rid = assert_envelope(r, 200)["request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid), rid


def test_body_over_the_limit_is_refused_by_nginx_in_json(stack):
    big = {"texts": [{"text": "x" * 1000} for _ in range(100)]}
    r = requests.post(f"{stack}/predict", json=big, headers={"X-Request-ID": "big-1"}, timeout=20)
    body = assert_envelope(r, 413)
    assert body["method"] == "POST"
    assert body["url"] == f"{stack}/predict"
    assert body["request-id"] == "big-1"


@pytest.mark.parametrize("path", ["/metrics", "/metrics/", "//metrics", "/%6Detrics"])
def test_metrics_are_not_exposed(stack, path):
    r = requests.get(f"{stack}{path}", timeout=10)
    assert_envelope(r, 404)
    assert "# HELP" not in r.text


def test_app_errors_pass_through_unchanged(stack):
    r = requests.get(f"{stack}/args/nope", timeout=10)
    body = assert_envelope(r, 404)
    assert "valid" in body["data"]


def test_upstream_down_answers_502_envelope(tmp_path):
    with nginx(tmp_path, f"127.0.0.1:{helpers.free_port()}") as base:
        r = requests.post(f"{base}/predict", json={"texts": [{"text": "x"}]},
                          headers={"X-Request-ID": "down-1"}, timeout=10)
        body = assert_envelope(r, 502)
        assert body["url"] == f"{base}/predict"
        assert body["method"] == "POST"
        assert body["request-id"] == "down-1"


def test_a_burst_over_the_rate_limit_gets_429_envelopes_and_the_service_stays_healthy(artifacts_dir, tmp_path):
    """The limits as shipped (20 r/s per address, burst 40): 150 requests at once from one address,
    each claiming another in the headers a client can set, which the limit does not go by."""
    conf = CONF.read_text()
    rate = int(re.search(r"limit_req_zone .* rate=(\d+)r/s;", conf)[1])
    burst = int(re.search(r"limit_req zone=\S+ burst=(\d+) nodelay;", conf)[1])
    with helpers.gunicorn(artifacts_dir, workers=1) as api, nginx(tmp_path, f"127.0.0.1:{api.port}") as base:
        time.sleep(1.0)  # the zone refills after nginx's own start-up probe
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: requests.get(f"{base}/health/live", timeout=10, headers={
                "X-Request-ID": f"b-{i}", "X-Forwarded-For": f"198.51.100.{i}", "X-Real-IP": f"198.51.100.{i}",
                "Forwarded": f"for=198.51.100.{i}"}), range(150)))
        elapsed = time.monotonic() - start
        statuses = Counter(r.status_code for r in answers)
        assert set(statuses) == {200, 429}, statuses
        assert statuses[200] >= burst  # the burst itself is served
        assert statuses[200] <= burst + 1 + rate * elapsed + 1, (statuses, elapsed)
        for r in answers:
            if r.status_code == 429:
                body = assert_envelope(r, 429)
                assert r.headers["Retry-After"] == "1"
                assert body["url"] == f"{base}/health/live" and body["method"] == "GET"
                assert body["request-id"].startswith("b-")
        # Gunicorn never saw the refused requests and is still healthy; after Retry-After, so is the proxy
        assert requests.get(f"{api.url}/health/ready", timeout=10).status_code == 200
        time.sleep(1.0)
        assert_envelope(requests.post(f"{base}/predict", json={"texts": [{"text": "Image segmentation."}]},
                                      timeout=10), 200)
    print(f"burst of 150 in {elapsed:.2f}s: {statuses[200]} served, {statuses[429]} refused with 429")
