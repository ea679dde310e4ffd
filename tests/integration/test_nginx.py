"""nginx with deploy/nginx/tagifai.conf in front of real Gunicorn: what a client behind the proxy sees."""

from __future__ import annotations

import json
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


def render(tmp: Path, upstream: str | list[str], port: int, max_body: str | None = None,
           rate_limit: bool = True) -> Path:
    """Write the shipped server config with this run's addresses, plus a minimal nginx.conf around it.

    Only the values the config marks as deployment-specific change (``upstream``: one address, or a
    list, one ``server`` line each, with the shipped line's parameters); everything under test is
    the file as shipped (``rate_limit=False`` drops the limit, for one client address sending a
    load). Its access log goes to ``tmp/access.log``.
    """
    upstreams = [upstream] if isinstance(upstream, str) else upstream
    text = CONF.read_text()
    line = re.search(r"^(\s+)server tagifai:8000\b(.*)$", text, flags=re.M)
    assert line, "deploy/nginx/tagifai.conf lost its upstream line"
    text = text.replace(line[0], "\n".join(f"{line[1]}server {address}{line[2]}" for address in upstreams))
    text, n_listen = re.subn(r"^(\s+)listen 80;", rf"\g<1>listen 127.0.0.1:{port};", text, flags=re.M)
    text, n_log = re.subn(r"^(\s+)access_log /var/log/nginx/access.log ", rf"\g<1>access_log {tmp / 'access.log'} ",
                          text, flags=re.M)
    assert n_listen == 1 and n_log == 1, "deploy/nginx/tagifai.conf lost its listen or access_log line"
    if max_body is not None:
        text, n_body = re.subn(r"^(\s+)client_max_body_size \S+;", rf"\g<1>client_max_body_size {max_body};", text,
                                 flags=re.M)
        assert n_body == 1
    if not rate_limit:
        text, n_limit = re.subn(r"^\s+limit_req zone=.*\n", "", text, flags=re.M)
        assert n_limit == 1
    (tmp / "tagifai.conf").write_text(text)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"{user}worker_processes 1;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"{temp_paths}\n"
        f"    include {tmp / 'tagifai.conf'};\n"
        "}\n"
    )
    return tmp / "nginx.conf"


@contextmanager
def nginx(tmp: Path, upstream: str | list[str], max_body: str | None = None,
          rate_limit: bool = True) -> Iterator[str]:
    """Run nginx in the foreground on a free loopback port; yield its base URL."""
    binary = helpers.require_binary("nginx")
    tmp.mkdir(parents=True, exist_ok=True)
    port = helpers.free_port()
    conf = render(tmp, upstream, port, max_body, rate_limit)
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


class Replica:
    """A stand-in replica on 127.0.0.1 that records the request id of every request it reads, then
    answers 200, or (``drop``) closes the connection without answering, as a worker killed
    mid-request does."""

    def __init__(self, drop: bool = False) -> None:
        import http.server
        import threading

        self.seen: list[str] = []
        replica = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one_request(self):
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                replica.seen.append(self.headers.get("X-Request-ID", ""))
                if drop:
                    self.close_connection = True
                    return
                body = b'{"status-code":200}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def access_lines(tmp: Path) -> list[dict]:
    """nginx's access log (the shipped JSON format), one dict a request."""
    return [json.loads(line) for line in (tmp / "access.log").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(("method", "path", "retried"), [
    ("POST", "/predict", True),
    ("POST", "/predict?version=v1", True),
    ("GET", "/health/ready", True),
    ("GET", "/models", False),
    ("PUT", "/models/default", False),
    ("POST", "/models/default/rollback", False),
    ("PUT", "/models/shadow", False),
    ("DELETE", "/models/shadow", False),
    ("POST", "/feedback", False),
    ("GET", "/models/history", False),
])
def test_only_requests_that_change_nothing_are_retried_on_another_replica(tmp_path, method, path, retried):
    """One replica drops every request it reads: a prediction or a read it dropped is answered by the
    other (the access log names both); a write it dropped is answered 502, and never reaches the other."""
    dead, live = Replica(drop=True), Replica()
    try:
        with nginx(tmp_path, [dead.address, live.address]) as base:
            for i in range(3):  # round robin: the first, second or third request goes to the dropping one
                rid = f"retry-{i}"
                r = requests.request(method, f"{base}{path}", json={"texts": []}, headers={"X-Request-ID": rid},
                                     timeout=10)
                if rid in dead.seen:
                    break
            assert rid in dead.seen

            def logged() -> list[dict]:
                return [entry for entry in access_lines(tmp_path) if entry["request_id"] == rid]

            helpers.wait_until(logged, timeout_s=5, what="the access line")  # written after the answer went out
            (line,) = logged()
    finally:
        dead.close()
        live.close()
    if retried:
        assert r.status_code == 200 and live.seen.count(rid) == 1, r.text
        assert line["upstream_addr"] == f"{dead.address}, {live.address}"
        assert line["upstream_status"] == "502, 200" and line["status"] == 200
    else:
        body = assert_envelope(r, 502)
        assert body["request-id"] == rid and rid not in live.seen
        assert line["upstream_addr"] == dead.address and line["upstream_status"] == "502"


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
