"""deploy/nginx's sites agree with the app and Gunicorn on limits, and the TLS site allows only modern
protocols and ciphers (both run for real in tests/integration/test_nginx.py)."""

from __future__ import annotations

import re

from tagifai_api import settings
from tests.helpers import NGINX_DIR, ROOT, gunicorn_default, nginx_text

CONF = nginx_text("tagifai.conf")
TLS = nginx_text("tagifai-tls.conf")


def directive(name: str, conf: str = CONF) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", conf, flags=re.M)


def nginx_size(value: str) -> int:
    """nginx's size syntax (8m, 512k, 1024) in bytes."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, value
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2].lower()]


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, value
    return int(match[1]) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[match[2]]


def test_body_limit_matches_the_app():
    (value,) = directive("client_max_body_size")
    assert nginx_size(value) == settings.DEFAULTS["MAX_CONTENT_LENGTH"]


def test_proxy_waits_longer_than_gunicorns_worker_timeout():
    timeout = gunicorn_default("timeout")
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = directive(name)
        assert nginx_seconds(value) > timeout, name
    assert timeout > settings.DEFAULTS["PREDICT_TIMEOUT_MS"] / 1000


def test_upstream_connections_close_before_gunicorn_closes_them():
    (value,) = directive("keepalive_timeout")
    assert nginx_seconds(value) < gunicorn_default("keepalive")
    assert directive("keepalive")
    assert 'Connection ""' in CONF and directive("proxy_http_version") == ["1.1"]


def test_forwarded_headers_match_the_trusted_proxy_hops():
    headers = {v.split()[0] for v in directive("proxy_set_header")}
    assert {"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Request-ID"} <= headers
    assert settings.DEFAULTS["PROXY_COUNT"] == 0  # no proxy trusted unless the deployment says so
    for config in ("docker-compose.yml", "deploy/k8s/configmap.yaml"):
        assert 'TAGIFAI_PROXY_COUNT: "1"' in (ROOT / config).read_text(), config


def test_own_errors_are_json_envelopes():
    pages = {int(code) for value in directive("error_page") for code in value.split()[:-1]}
    assert {413, 429, 502, 503, 504} <= pages
    for code in pages:
        block = re.search(rf"location @error_{code} \{{(.*?)\n    \}}", CONF, flags=re.S)[1]
        assert "default_type application/json" in block
        for key in ("message", "method", "status-code", "timestamp", "url", "request-id"):
            assert f'"{key}":' in block, (code, key)
        assert f'"status-code":{code},' in block


def test_each_client_address_is_rate_limited_with_a_burst_and_told_when_to_retry():
    (zone,) = directive("limit_req_zone")
    assert zone.startswith("$binary_remote_addr zone=tagifai_per_client:")
    (limit,) = directive("limit_req")
    assert limit.startswith("zone=tagifai_per_client burst=") and limit.endswith("nodelay")
    assert directive("limit_req_status") == ["429"]
    block = re.search(r"location @error_429 \{(.*?)\n    \}", CONF, flags=re.S)[1]
    assert "add_header Retry-After 1 always;" in block


def test_both_sites_proxy_alike_and_tls_adds_only_its_own_lines():
    """The TLS site is the plain one plus TLS: the same snippets, and nothing else to fill in but the
    certificate and its key."""
    assert directive("include", (NGINX_DIR / "tagifai.conf").read_text()) == [
        "snippets/tagifai-http.conf", "snippets/tagifai-proxy.conf"]
    assert directive("include", (NGINX_DIR / "tagifai-tls.conf").read_text()) == [
        "snippets/tagifai-http.conf", "snippets/tagifai-proxy.conf"]
    assert directive("listen", TLS) == ["80", "443 ssl"]
    assert directive("ssl_certificate", TLS) == ["/etc/nginx/tls/fullchain.pem"]
    assert directive("ssl_certificate_key", TLS) == ["/etc/nginx/tls/privkey.pem"]


def test_tls_is_1_2_and_1_3_only_with_forward_secret_aead_ciphers():
    assert directive("ssl_protocols", TLS) == ["TLSv1.2 TLSv1.3"]
    (ciphers,) = directive("ssl_ciphers", TLS)
    for cipher in ciphers.split(":"):
        assert cipher.startswith("ECDHE-") and cipher.endswith(("GCM-SHA256", "GCM-SHA384", "CHACHA20-POLY1305"))
    assert directive("ssl_prefer_server_ciphers", TLS) == ["off"]  # every cipher left is strong: the client picks
    assert directive("ssl_session_tickets", TLS) == ["off"]  # tickets' keys never rotate in nginx: no forward secrecy


def test_plain_http_is_redirected_and_https_answers_carry_hsts():
    redirect = re.search(r"server \{\n    listen 80;(.*?)\n\}", TLS, flags=re.S)[1]
    assert "return 301 https://$host$request_uri;" in redirect and "proxy_pass" not in redirect
    hsts = re.search(r"map \$https \$tagifai_hsts \{(.*?)\}", TLS, flags=re.S)[1]
    assert re.search(r'^\s+on "max-age=(\d+)";$', hsts, flags=re.M)[1] == str(2 * 365 * 24 * 3600)
    # nginx inherits no add_header into a location that has one: each such location adds them all
    blocks = re.findall(r"\n    location [^{]+\{(.*?)\n    \}", TLS, flags=re.S)
    assert len(blocks) == 8  # /, /metrics and nginx's six error answers
    for block in blocks:
        assert "add_header Strict-Transport-Security $tagifai_hsts always;" in block, block
    own = (NGINX_DIR / "snippets" / "tagifai-headers.conf").read_text()
    for header in ("X-Request-ID", "X-Content-Type-Options nosniff", "Cache-Control no-store", "Strict-Transport"):
        assert f"add_header {header}" in own, header
