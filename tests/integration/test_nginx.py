"""nginx with deploy/nginx/tagifai.conf, and with tagifai-tls.conf and a certificate made here, in front of
real Gunicorn: what a client behind the proxy sees."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

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
