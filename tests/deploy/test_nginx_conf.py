"""deploy/nginx/tagifai.conf agrees with the app and Gunicorn on limits (it runs for real in tests/integration)."""

from __future__ import annotations

import re

from tagifai_api import settings
from tests.helpers import ROOT, gunicorn_default

CONF = (ROOT / "deploy" / "nginx" / "tagifai.conf").read_text()


def directive(name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", CONF, flags=re.M)


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
