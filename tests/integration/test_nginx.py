"""nginx with deploy/nginx/tagifai.conf, and with tagifai-tls.conf and a certificate made here, in front of
real Gunicorn: what a client behind the proxy sees."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from benchmarks.client import KeepAliveClient
from tagifai_api.store.database import Store
from tests import helpers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(artifacts_dir):
    """Gunicorn (one worker) that the module's proxies share."""
    with helpers.gunicorn(artifacts_dir, workers=1, env={"TAGIFAI_PROXY_COUNT": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def stack(api, tmp_path_factory):
    """nginx (tagifai.conf) in front of ``api``, with a 64 KiB body limit so the 413 test stays small."""
    with helpers.nginx(tmp_path_factory.mktemp("nginx"), f"127.0.0.1:{api.port}",
                       directives={"client_max_body_size": "64k"}) as proxy:
        yield proxy.url


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
    # nginx's own answers carry the headers the app's do; HSTS only over HTTPS (tagifai-tls.conf)
    assert (r.headers["X-Content-Type-Options"], r.headers["Cache-Control"]) == ("nosniff", "no-store")
    assert "Strict-Transport-Security" not in r.headers


def test_app_errors_pass_through_unchanged(stack):
    r = requests.get(f"{stack}/args/nope", timeout=10)
    body = assert_envelope(r, 404)
    assert "valid" in body["data"]


def test_upstream_down_answers_502_envelope(tmp_path):
    with helpers.nginx(tmp_path, f"127.0.0.1:{helpers.free_port()}") as proxy:
        base = proxy.url
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
        with helpers.nginx(tmp_path, [dead.address, live.address]) as proxy:
            base = proxy.url
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


# --- two replicas behind nginx, under load, losing a worker, a whole replica, then reloading ----

LOAD_CONNECTIONS = 64
LOAD_S = 30.5
PREDICT_BODY = json.dumps({"texts": [{"text": helpers.LESSON_TAGS["natural-language-processing"]}]}).encode()


def _post_until(stop: threading.Event, port: int, index: int, outcomes: list, refused: list) -> None:
    """One client: single-text /predict on its own kept-alive connection to nginx until ``stop``,
    never resending (benchmarks/client.py); every request's id and outcome."""
    client = KeepAliveClient("127.0.0.1", port)
    n = 0
    while not stop.is_set():
        n += 1
        rid = f"kill-{index}-{n}"
        try:
            outcomes.append((rid, client.request("POST", "/predict", PREDICT_BODY, {"X-Request-ID": rid})))
        except ConnectionError:
            refused.append(rid)
            time.sleep(0.05)
    client.close()


def _workers(master: int) -> set[int]:
    return {p.pid for p in psutil.Process(master).children()}


def _busiest_worker(master: int, port: int) -> int:
    """The worker holding most connections on ``port`` (nginx's, to this replica)."""
    held = {pid: sum(1 for c in psutil.Process(pid).net_connections("tcp")
                     if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)
            for pid in _workers(master)}
    return max(held, key=held.get)


def _counted(samples: list) -> tuple[float, float]:
    """(/predict answered 200, predictions) in one replica's metrics."""
    return helpers.value(samples, *helpers.PREDICT_COUNT), helpers.value(samples, "tagifai_predictions_total")


def test_two_replicas_lose_a_worker_then_one_replica_then_reload_the_other_and_no_client_sees_it(
        artifacts_dir, tmp_path):
    """64 connections of single-text /predict through nginx to two Gunicorn replicas (2 workers each)
    sharing one store, for 30 s: kill -9 of a worker of A; kill -9 of B's master and workers, once
    nginx takes A back (the upstream's fail_timeout after the first kill); HUP of A. Every request
    is answered 200, each retry shows in the access log, the metrics of both replicas count what the
    clients received (B's read from the files it left), and the prediction log holds every request
    but those a killed process had not written yet."""
    fail_timeout = int(re.search(r"server tagifai:8000 .*fail_timeout=(\d+)s", helpers.nginx_text())[1])
    store_url = helpers.private_store(artifacts_dir, tmp_path)
    metrics_b = tmp_path / "metrics-b"
    with ExitStack() as stack:
        a, b = (stack.enter_context(helpers.gunicorn(
            artifacts_dir, workers=2, log_path=tmp_path / f"gunicorn-{name}.log",
            env={"TAGIFAI_DATABASE_URL": store_url, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"metrics-{name}")}))
            for name in ("a", "b"))
        replicas = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        base = stack.enter_context(helpers.nginx(tmp_path / "nginx", replicas, rate_limit=False)).url
        port = int(base.rsplit(":", 1)[1])
        stop, outcomes, refused = threading.Event(), [], []
        clients = [threading.Thread(target=_post_until, args=(stop, port, i, outcomes, refused), daemon=True)
                   for i in range(LOAD_CONNECTIONS)]
        began = time.monotonic()
        for thread in clients:
            thread.start()
        time.sleep(3)
        worker_killed_at = time.monotonic()
        os.kill(_busiest_worker(a.proc.pid, a.port), signal.SIGKILL)
        time.sleep(fail_timeout + 2)  # nginx has taken A back (three failures take it out for fail_timeout)
        replica_killed_at = time.monotonic()
        for pid in (b.proc.pid, *_workers(b.proc.pid)):
            os.kill(pid, signal.SIGKILL)
        time.sleep(5)
        old = _workers(a.proc.pid)
        reloaded_at = time.monotonic()
        os.kill(a.proc.pid, signal.SIGHUP)
        helpers.wait_until(lambda: len(_workers(a.proc.pid)) == 2 and not _workers(a.proc.pid) & old,
                           timeout_s=20, what="A's workers replaced")
        reload_s = time.monotonic() - reloaded_at
        time.sleep(max(0.0, began + LOAD_S - time.monotonic()))
        stop.set()
        for thread in clients:
            thread.join(30)
        elapsed = time.monotonic() - began
        counted_a = _counted(helpers.scrape(a.url))
    # A has stopped (TERM): its workers wrote what their prediction logs held as they exited
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_b))
    counted_b = _counted([s for family in registry.collect() for s in family.samples])
    store = Store(store_url)
    try:
        logged = Counter(row["request_id"] for row in store.predictions())
    finally:
        store.close()
    lines = {line["request_id"]: line for line in access_lines(tmp_path / "nginx") if line["uri"] == "/predict"}

    # every request answered 200, with its prediction, under its own request id
    assert not refused
    statuses = Counter(o.status for _, o in outcomes)
    assert statuses == {200: len(outcomes)}, [(rid, o.status, o.error, o.body[:200]) for rid, o in outcomes
                                              if o.status != 200][:5]
    for rid, o in outcomes:
        body = json.loads(o.body)
        assert body["request-id"] == rid
        assert body["data"]["predictions"][0]["predicted_tag"] == "natural-language-processing"
    # nginx saw each once, and says which replicas it sent it to
    assert sorted(lines) == sorted(rid for rid, _ in outcomes)
    a_addr, b_addr = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"
    tried = {rid: line["upstream_addr"].split(", ") for rid, line in lines.items()}
    retried = {rid for rid, addrs in tried.items() if len(addrs) > 1}
    answered = Counter(addrs[-1] for addrs in tried.values())
    failed_at = Counter(addr for addrs in tried.values() for addr in addrs[:-1])
    assert set(answered) == {a_addr, b_addr}
    assert failed_at[a_addr] and failed_at[b_addr]  # both kills caught requests in flight, which nginx retried
    # what each replica counted: what it answered, plus at most what it answered to nginx too late
    # (a worker killed between its prediction and request counters counted one and not the other)
    for (requests_counted, predictions), addr in ((counted_a, a_addr), (counted_b, b_addr)):
        assert answered[addr] <= requests_counted <= answered[addr] + failed_at[addr], addr
        assert answered[addr] <= predictions <= answered[addr] + failed_at[addr], addr
    # the prediction log: every answer, but the last ones of a process killed before writing them
    ended = {rid: o.ended_at for rid, o in outcomes}
    missing = [rid for rid in ended if not logged[rid]]
    lost_to_a_kill = [rid for rid in missing if tried[rid][-1] == a_addr
                      and worker_killed_at - 2 <= ended[rid] <= worker_killed_at + 1]
    lost_to_b_kill = [rid for rid in missing if tried[rid][-1] == b_addr
                      and replica_killed_at - 2 <= ended[rid] <= replica_killed_at + 1]
    assert sorted(missing) == sorted(lost_to_a_kill + lost_to_b_kill)
    assert all(logged[rid] for rid in retried)  # by the replica that answered, under the same request id
    twice = [rid for rid, n in logged.items() if n > 1]
    assert set(twice) <= retried  # logged by a replica that died before its answer reached nginx, too
    print("REPLICAS-KILL", json.dumps({
        "seconds": round(elapsed, 1), "requests": len(outcomes), "not_200": len(outcomes) - statuses[200],
        "retried_by_nginx": len(retried), "answered": {"a": answered[a_addr], "b": answered[b_addr]},
        "retried_from": {"a": failed_at[a_addr], "b": failed_at[b_addr]},
        "counted": {"a": counted_a[0], "b": counted_b[0]},
        "log_missing": {"a_worker_kill": len(lost_to_a_kill), "b_kill": len(lost_to_b_kill)}, "log_twice": len(twice),
        "reload_s": round(reload_s, 1)}))


def test_a_burst_over_the_rate_limit_gets_429_envelopes_and_the_service_stays_healthy(artifacts_dir, tmp_path):
    """The limits as shipped (20 r/s per address, burst 40): 150 requests at once from one address,
    each claiming another in the headers a client can set, which the limit does not go by."""
    conf = helpers.nginx_text()
    rate = int(re.search(r"limit_req_zone .* rate=(\d+)r/s;", conf)[1])
    burst = int(re.search(r"limit_req zone=\S+ burst=(\d+) nodelay;", conf)[1])
    with helpers.gunicorn(artifacts_dir, workers=1) as api, helpers.nginx(tmp_path, f"127.0.0.1:{api.port}") as proxy:
        base = proxy.url
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


# --- TLS: tagifai-tls.conf with a certificate made by `openssl req -x509` ---------------------------

HSTS = "max-age=63072000"
#: what a client offering an old protocol has to offer: OpenSSL 3 refuses TLS 1.0/1.1 itself above level 0
OLD_CLIENT = ("-cipher", "DEFAULT:@SECLEVEL=0")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple:
    return helpers.self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_stack(api, certificate, tmp_path_factory) -> helpers.Nginx:
    with helpers.nginx(tmp_path_factory.mktemp("nginx-tls"), f"127.0.0.1:{api.port}", tls=certificate) as proxy:
        yield proxy


def handshake(url: str, *options: str) -> str | None:
    """The protocol ``openssl s_client`` (with ``options``) agrees with the server at ``url``, or None
    when the server refuses the handshake."""
    port = url.rsplit(":", 1)[1]
    out = subprocess.run([helpers.require_binary("openssl"), "s_client", "-brief", "-connect", f"127.0.0.1:{port}",
                          "-servername", "localhost", *options], input="", capture_output=True, text=True, timeout=20)
    agreed = re.search(r"^Protocol version: (\S+)$", out.stdout + out.stderr, flags=re.M)
    if out.returncode == 0 and agreed:
        return agreed[1]
    assert "alert protocol version" in out.stderr, out.stderr  # refused for its version, not anything else
    return None


def test_plain_http_is_redirected_to_the_same_url_over_https(tls_stack):
    for method in ("GET", "POST", "HEAD"):
        r = requests.request(method, f"{tls_stack.url}/predict?explain=true", allow_redirects=False, timeout=10)
        assert r.status_code == 301 and r.headers["Location"] == "https://127.0.0.1/predict?explain=true", method
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "Strict-Transport-Security" not in r.headers  # meaningless over HTTP (RFC 6797 says never)


def test_every_answer_over_https_carries_hsts_and_nosniff(tls_stack, certificate):
    ca = str(certificate[0])
    app = requests.get(f"{tls_stack.tls_url}/health/live", verify=ca, timeout=10)  # the app's answer
    own = requests.get(f"{tls_stack.tls_url}/metrics", verify=ca, timeout=10)  # nginx's own
    for r, status in ((app, 200), (own, 404)):
        body = assert_envelope(r, status)
        assert body["url"].startswith(f"{tls_stack.tls_url}/")  # the app sees the scheme and port the client used
        # exactly one of each (requests would join repeated headers with a comma)
        assert (r.headers["Strict-Transport-Security"], r.headers["X-Content-Type-Options"]) == (HSTS, "nosniff")
        assert r.headers["Cache-Control"] == "no-store"


def test_tls_1_0_and_1_1_are_refused_while_1_2_and_1_3_are_spoken(tls_stack, certificate, api, tmp_path):
    assert handshake(tls_stack.tls_url, "-tls1", *OLD_CLIENT) is None
    assert handshake(tls_stack.tls_url, "-tls1_1", *OLD_CLIENT) is None
    assert handshake(tls_stack.tls_url, "-tls1_2") == "TLSv1.2"
    assert handshake(tls_stack.tls_url, "-tls1_3") == "TLSv1.3"
    # The same client gets TLS 1.0 and 1.1 from the same site with only its protocols and ciphers
    # widened: the refusals above are the shipped configuration's, not this machine's OpenSSL's.
    widened = {"ssl_protocols": "TLSv1 TLSv1.1 TLSv1.2 TLSv1.3", "ssl_ciphers": "DEFAULT:@SECLEVEL=0"}
    with helpers.nginx(tmp_path, f"127.0.0.1:{api.port}", tls=certificate, directives=widened) as old:
        assert handshake(old.tls_url, "-tls1", *OLD_CLIENT) == "TLSv1"
        assert handshake(old.tls_url, "-tls1_1", *OLD_CLIENT) == "TLSv1.1"


def test_predict_over_https_with_curl(tls_stack, certificate):
    curl = helpers.require_binary("curl")
    command = [curl, "-sS", "--cacert", str(certificate[0]), "-H", "Content-Type: application/json",
               "-d", json.dumps({"texts": [{"text": "Transformers for text classification."}]}),
               f"{tls_stack.tls_url}/predict"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["status-code"] == 200 and body["url"] == f"{tls_stack.tls_url}/predict"
    assert body["data"]["predictions"][0]["predicted_tag"] == "natural-language-processing"
    # without the certificate's CA, curl refuses the server (60: the peer's certificate is not trusted)
    unverified = subprocess.run(command[:2] + command[4:], capture_output=True, text=True, timeout=30)
    assert unverified.returncode == 60, unverified.stderr
