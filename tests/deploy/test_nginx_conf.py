"""deploy/nginx's sites agree with the app and Gunicorn on limits, and the TLS site allows only modern
protocols and ciphers (both run for real in tests/integration/test_nginx.py)."""

from __future__ import annotations

import re

import pytest

from tagifai_api import settings
from tests.helpers import NGINX_DIR, ROOT, gunicorn_default, nginx_text

CONF = nginx_text("tagifai.conf")
TLS = nginx_text("tagifai-tls.conf")
SITES = {"tagifai.conf": CONF, "tagifai-tls.conf": TLS}


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


# --- which requests nginx sends to another replica ------------------------------------------------


def blocks(text: str, opener: str) -> list[tuple[str, str]]:
    """``(argument, body)`` of each top-level ``opener ARG {...}`` block in ``text`` (braces matched)."""
    out = []
    for match in re.finditer(rf"^\s*{opener}\b([^{{;]*)\{{", text, flags=re.M):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append((match[1].strip(), text[match.end():i - 1]))
    return out


def own_directive(body: str, name: str) -> str | None:
    """A directive set in this block itself, not in a block nested in it."""
    for _, inner in blocks(body, r"(?:location|if|limit_except)"):
        body = body.replace(inner, "")
    values = re.findall(rf"^\s*{name}\s+([^;]+);", body, flags=re.M)
    return values[-1] if values else None


def nginx_location(locations: list[tuple[str, str]], path: str) -> tuple[str, str] | None:
    """The location nginx picks for ``path``: an exact match, else the longest prefix unless a regex
    matches first (``^~`` prefixes skip the regexes). Named locations are only reached internally."""
    exact = [loc for loc in locations if loc[0].split()[0] == "=" and loc[0].split()[1] == path]
    if exact:
        return exact[0]
    prefixes = []
    for loc in locations:
        parts = loc[0].split()
        if len(parts) == 1 and not parts[0].startswith("@") and path.startswith(parts[0]):
            prefixes.append((len(parts[0]), False, loc))
        elif len(parts) == 2 and parts[0] == "^~" and path.startswith(parts[1]):
            prefixes.append((len(parts[1]), True, loc))
    longest = max(prefixes, key=lambda p: p[0], default=None)
    if longest and longest[1]:
        return longest[2]
    for loc in locations:
        parts = loc[0].split()
        if len(parts) == 2 and parts[0] in ("~", "~*"):
            if re.search(parts[1], path, flags=re.I if parts[0] == "~*" else 0):
                return loc
    return longest[2] if longest else None


def retry_policy(site: str, server: str, location_body: str) -> set[str]:
    """The ``proxy_next_upstream`` conditions in force in a location (nginx's default: error timeout)."""
    value = own_directive(location_body, "proxy_next_upstream") or own_directive(server, "proxy_next_upstream")
    if value is None:
        value = own_directive(site, "proxy_next_upstream") or "error timeout"
    return set(value.split())


def proxies(site: str) -> list[str]:
    """The bodies of a site's servers that proxy to the app (not the TLS site's redirect)."""
    return [body for _, body in blocks(site, "server") if "proxy_pass" in body]


def sample_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "x.js" if m[1] == "filename" else "v1", rule)


@pytest.mark.parametrize("site", SITES)
def test_only_predictions_and_reads_are_retried_and_every_write_route_says_off(app, site):
    """nginx retries GET, HEAD, PUT and DELETE by default, and a POST with non_idempotent: every
    route of the app that writes (any method but GET and HEAD, /predict aside) must be served by a
    location with ``proxy_next_upstream off``; /predict by one that retries it."""
    conf = SITES[site]
    servers = proxies(conf)
    assert len(servers) == 1
    checked = 0
    for server in servers:
        locations = blocks(server, "location")
        for rule in app.url_map.iter_rules():
            path = sample_path(rule.rule)
            location = nginx_location(locations, path)
            assert location is not None, path
            if "proxy_pass" not in location[1]:
                continue  # answered by nginx itself (/metrics)
            policy = retry_policy(conf, server, location[1])
            writes = (rule.methods or set()) - {"GET", "HEAD", "OPTIONS"}
            if rule.rule == "/predict":
                assert {"error", "timeout", "non_idempotent"} <= policy, (path, policy)
                assert "http_503" not in policy  # counted as a failure: a busy fleet would go all down
                checked += 1
            elif writes:
                assert policy == {"off"}, (rule.rule, sorted(writes), policy)
                checked += 1
    assert checked >= 6  # /predict, /feedback and the registry's writes, in each server block


@pytest.mark.parametrize("site", SITES)
def test_predict_retries_are_bounded(site):
    """A /predict is retried on at most two more replicas, and only while a retry can still beat the
    proxy's own read timeout; a prediction that waited its whole queue deadline may still be retried."""
    for server in proxies(SITES[site]):
        locations = blocks(server, "location")
        _, body = nginx_location(locations, "/predict")
        tries = int(own_directive(body, "proxy_next_upstream_tries"))
        window = nginx_seconds(own_directive(body, "proxy_next_upstream_timeout"))
        read_timeout = nginx_seconds(own_directive(body, "proxy_read_timeout")
                                     or own_directive(server, "proxy_read_timeout"))
        assert 2 <= tries <= 3
        assert settings.DEFAULTS["PREDICT_TIMEOUT_MS"] / 1000 < window < read_timeout


@pytest.mark.parametrize("site", SITES)
def test_the_access_log_names_every_replica_a_request_was_sent_to(site):
    (fmt,) = re.findall(r"^log_format (\S+) escape=json (.*?);$", SITES[site], flags=re.M | re.S)
    for variable in ("$upstream_addr", "$upstream_status", "$tagifai_request_id", "$status"):
        assert variable in fmt[1], variable
    for _, server in blocks(SITES[site], "server"):  # the TLS site's redirect too
        assert own_directive(server, "access_log").endswith(f" {fmt[0]}")


def test_the_readmes_replica_set_up_uses_the_shipped_upstream_line():
    """The README's two replicas on one host: each a Gunicorn command on the port of a `server` line
    written as the shipped one is."""
    readme = (ROOT / "README.md").read_text()
    shipped = re.search(r"^\s+server tagifai:8000( [^;]*);", CONF, flags=re.M)[1]
    example = re.findall(r"^#\s+server 127\.0\.0\.1:(\d+)( [^;]*);", readme, flags=re.M)
    assert len(example) >= 2 and {params for _, params in example} == {shipped}
    for port, _ in example:
        assert f"PORT={port} WEB_CONCURRENCY=2 .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app &" in readme


# --- TLS ---------------------------------------------------------------------------------------


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
    # nginx inherits a server's add_header only into a location with none of its own: the server
    # adds HSTS, and each location that adds a header adds all of nginx's own (HSTS included)
    (server,) = proxies(TLS)
    assert own_directive(server, "add_header") == "Strict-Transport-Security $tagifai_hsts always"
    locations = blocks(server, "location")
    assert len(locations) == 11  # 4 proxied, /metrics and nginx's six error answers
    for where, body in locations:
        if "add_header" in body:
            assert "include snippets/tagifai-headers.conf;" not in body  # expanded by nginx_text
            assert "add_header Strict-Transport-Security $tagifai_hsts always;" in body, where
        else:
            assert "proxy_pass" in body, where
    own = (NGINX_DIR / "snippets" / "tagifai-headers.conf").read_text()
    for header in ("X-Request-ID", "X-Content-Type-Options nosniff", "Cache-Control no-store", "Strict-Transport"):
        assert f"add_header {header}" in own, header
