"""Identity-provider tokens, tested as an attacker would: keys made here, a JWKS on loopback.

Each refused token gets exactly its status (401 with ``WWW-Authenticate: Bearer ... invalid_token``,
or 503 with ``Retry-After`` while the provider's keys were never fetched) in the envelope, nothing
else: no data, the token never echoed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from flask import Blueprint

from tagifai_api.auth import oidc
from tagifai_api.auth.guard import require_role
from tagifai_api.auth.keys import KeyStore
from tagifai_api.web import access
from tagifai_api.web.responses import construct_response
from tests.helpers import ENVELOPE, IdentityProvider

admin_bp = Blueprint("oidc_admin_test", __name__)


@admin_bp.put("/test/oidc-admin")
@require_role("admin")
def admin_route():
    return construct_response(200, data={"changed": True})


@pytest.fixture
def idp():
    provider = IdentityProvider()
    yield provider
    provider.stop()


@pytest.fixture
def token_app(make_app, idp):
    def factory(mode: str = "all", **overrides):
        app = make_app(AUTH=mode, METRICS=False, **idp.settings(**overrides))
        app.register_blueprint(admin_bp)
        return app

    return factory


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict, claims: dict, signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def refused(r, status: int, token: str | None = None, why: str | None = None) -> None:
    """Exactly the refusal: the status, the envelope with no data, the challenge, never the token."""
    body = r.get_json()
    assert r.status_code == status, body
    assert ENVELOPE <= body.keys() and body["status-code"] == status and "data" not in body
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith('Bearer realm="tagifai"')
    else:
        assert "WWW-Authenticate" not in r.headers
    if token:
        assert token not in r.get_data(as_text=True) and token[:40] not in r.get_data(as_text=True)
    if why:
        assert why in body["message"], body["message"]


def test_a_valid_token_passes_and_its_role_decides(token_app, idp):
    client = token_app().test_client()
    predict = idp.token()
    assert client.get("/args", headers=bearer(predict)).status_code == 200
    refused(client.put("/test/oidc-admin", headers=bearer(predict)), 403, predict,
            "the token of 'alice' has the predict role")
    admin = idp.token(roles=["tagifai:predict", "tagifai:admin"])
    assert client.put("/test/oidc-admin", headers=bearer(admin)).get_json()["data"] == {"changed": True}
    nothing = idp.token(roles=["someone-else:admin"])
    refused(client.get("/args", headers=bearer(nothing)), 403, nothing, "holds none of this service's roles")
    as_scope = idp.token(roles="openid tagifai:admin")  # a space-separated string, as scopes are
    assert client.put("/test/oidc-admin", headers=bearer(as_scope)).status_code == 200


def test_roles_from_a_dotted_claim_and_renamed_roles(token_app, idp):
    client = token_app(OIDC_ROLES_CLAIM="realm_access.roles", OIDC_ADMIN_ROLE="ops").test_client()
    token = idp.token(roles=None, realm_access={"roles": ["ops"]})
    assert client.put("/test/oidc-admin", headers=bearer(token)).status_code == 200
    old_name = idp.token(roles=None, realm_access={"roles": ["tagifai:admin"]})
    assert client.put("/test/oidc-admin", headers=bearer(old_name)).status_code == 403


def test_an_es256_key_and_api_keys_side_by_side(token_app, idp, app_store):
    key = KeyStore(app_store).create("ops", "admin")
    idp.rotate("ec-1", kind="ec")
    client = token_app().test_client()
    assert client.get("/args", headers=bearer(idp.token(kid="ec-1"))).status_code == 200
    assert client.put("/test/oidc-admin", headers=bearer(key)).status_code == 200
    assert client.put("/test/oidc-admin", headers={"X-API-Key": key}).status_code == 200


def hs256_with_public_key(idp) -> str:
    """The classic confusion attack: HMAC over the token with the provider's public key as secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    claims = idp.claims(roles=["tagifai:admin"])
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(idp.public_pem("rsa-1"), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def tampered(idp) -> str:
    head, _, signature = idp.token().split(".")
    return ".".join([head, b64(json.dumps(idp.claims(roles=["tagifai:admin"])).encode()), signature])


ATTACKS = {
    # case: (token maker, status, why)
    "expired": (lambda p: p.token(exp=int(time.time()) - 120, iat=int(time.time()) - 600, nbf=None), 401,
                "expired"),
    "not yet valid": (lambda p: p.token(nbf=int(time.time()) + 600), 401, "not valid yet"),
    "wrong issuer": (lambda p: p.token(iss="https://evil.example"), 401, "another issuer"),
    "wrong audience": (lambda p: p.token(aud="another-api"), 401, "another audience"),
    "no expiry": (lambda p: p.token(exp=None), 401, "'exp'"),
    "no subject": (lambda p: p.token(sub=None), 401, "'sub'"),
    "alg none": (lambda p: forged({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, p.claims(roles=["tagifai:admin"])),
                 401, "algorithm is not accepted"),
    "alg None": (lambda p: forged({"alg": "None", "kid": "rsa-1"}, p.claims()), 401, "algorithm is not accepted"),
    "HS256 with the public key as secret": (hs256_with_public_key, 401, "algorithm is not accepted"),
    "unknown key id": (lambda p: (p.rotate("rogue"), p.published.remove("rogue"), p.token(kid="rogue"))[-1], 401,
                       "key the identity provider does not publish"),
    "no key id": (lambda p: forged({"alg": "RS256"}, p.claims(), b"x" * 256), 401, "names no signing key"),
    "tampered payload": (tampered, 401, "signature does not verify"),
    "signature cut off": (lambda p: p.token().rsplit(".", 1)[0] + ".", 401, None),
    "garbage with two dots": (lambda p: "a.b.c", 401, "malformed"),
    "huge token": (lambda p: p.token(padding="x" * 200_000), 401, "too long"),
}


@pytest.mark.parametrize("case", list(ATTACKS))
def test_attacks_are_refused_with_their_status_and_nothing_else(token_app, idp, case):
    make, status, why = ATTACKS[case]
    client = token_app().test_client()
    assert client.get("/args", headers=bearer(idp.token())).status_code == 200  # the keys are in hand
    token = make(idp)
    for path, method in (("/args", "GET"), ("/test/oidc-admin", "PUT"), ("/predict", "POST")):
        r = client.open(path, method=method, headers=bearer(token), json={"texts": [{"text": "A text."}]})
        refused(r, status, token, why)
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_a_token_in_the_wrong_header_is_refused(token_app, idp):
    client = token_app().test_client()
    token = idp.token(roles=["tagifai:admin"])
    refused(client.get("/args", headers={"X-API-Key": token}), 401, token, "not in X-API-Key")
    for header in ({"Authorization": f"Token {token}"}, {"Authorization": f"Basic {token}"},
                   {"Authorization": token}, {"Cookie": f"access_token={token}"}, {"X-Access-Token": token}):
        refused(client.get("/args", headers=header), 401, token)
    refused(client.get(f"/args?access_token={token}"), 401)


def test_tokens_are_refused_where_no_provider_is_configured(make_app, idp):
    client = make_app(AUTH="all", METRICS=False).test_client()
    token = idp.token(roles=["tagifai:admin"])
    refused(client.get("/args", headers=bearer(token)), 401, token, "API keys only")


def test_a_key_rotated_at_the_provider_is_fetched_once_and_refetches_are_rate_limited(token_app, idp):
    for kid in ("rsa-2", "rsa-3", "rogue"):  # made before the clock matters (RSA key generation is slow)
        idp.rotate(kid)
        idp.published.remove(kid)
    client = token_app(OIDC_REFETCH_S=2.0).test_client()
    assert client.get("/args", headers=bearer(idp.token(kid="rsa-1"))).status_code == 200
    time.sleep(2.1)
    fetched = idp.hits.get("/jwks", 0)
    idp.published = ["rsa-2"]  # rotated: the old key withdrawn
    assert client.get("/args", headers=bearer(idp.token(kid="rsa-2"))).status_code == 200  # one refetch
    assert idp.hits["/jwks"] == fetched + 1
    # a flood of tokens naming keys nobody publishes: no more fetches within the interval
    for i in range(50):
        refused(client.get("/args", headers=bearer(idp.token(kid="rogue", headers={"kid": f"forged-{i}"}))), 401)
    idp.published.append("rsa-3")  # rotated again at once: not fetched until the interval has passed
    refused(client.get("/args", headers=bearer(idp.token(kid="rsa-3"))), 401)
    assert idp.hits["/jwks"] == fetched + 1
    time.sleep(2.1)
    assert client.get("/args", headers=bearer(idp.token(kid="rsa-3"))).status_code == 200
    # the key withdrawn at the provider (rsa-1) is gone from the cache too
    refused(client.get("/args", headers=bearer(idp.token(kid="rsa-1"))), 401)


def test_provider_down_cached_keys_pass_others_401_and_failures_are_counted(make_app, idp):
    app = make_app(AUTH="all", **idp.settings(OIDC_REFETCH_S=0.2, OIDC_TIMEOUT_S=0.5))
    client = app.test_client()
    assert client.get("/args", headers=bearer(idp.token())).status_code == 200
    idp.down = True
    idp.rotate("rsa-2")
    time.sleep(0.3)
    asked = dict(idp.hits)
    assert client.get("/args", headers=bearer(idp.token(kid="rsa-1"))).status_code == 200
    assert idp.hits == asked  # a cached key: the provider is not even asked
    refused(client.get("/args", headers=bearer(idp.token(kid="rsa-2"))), 401)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "tagifai_oidc_jwks_fetch_failures_total 1.0" in metrics
    idp.down = False
    time.sleep(0.3)
    assert client.get("/args", headers=bearer(idp.token(kid="rsa-2"))).status_code == 200


def test_provider_down_from_the_start_is_503_with_retry_after_and_keys_still_work(make_app, idp, app_store):
    key = KeyStore(app_store).create("ops", "admin")
    idp.down = True
    app = make_app(AUTH="all", METRICS=False, **idp.settings(OIDC_REFETCH_S=5.0, OIDC_TIMEOUT_S=0.5))
    app.register_blueprint(admin_bp)
    client = app.test_client()
    token = idp.token()
    r = client.get("/args", headers=bearer(token))
    refused(r, 503, token, "could not be fetched yet")
    assert 1 <= int(r.headers["Retry-After"]) <= 5
    asked = dict(idp.hits)
    refused(client.get("/args", headers=bearer(token)), 503)
    assert idp.hits == asked  # no new fetch within the interval, so nothing to wait for
    assert client.get("/args", headers=bearer(key)).status_code == 200  # API keys are not affected
    refused(client.get("/args"), 401)


def test_a_slow_provider_stalls_only_a_request_whose_key_is_not_cached_and_only_up_to_the_timeout(make_app, idp):
    client = make_app(AUTH="all", METRICS=False, **idp.settings(OIDC_REFETCH_S=0.1, OIDC_TIMEOUT_S=0.3)).test_client()
    assert client.get("/args", headers=bearer(idp.token())).status_code == 200
    idp.delay_s = 3.0
    idp.rotate("rsa-2")
    time.sleep(0.15)
    # The provider answers after 3 s; the request gives up after one fetch timeout (0.3 s here), long
    # before (the bound is the provider's delay, not a speed target).
    started = time.monotonic()
    refused(client.get("/args", headers=bearer(idp.token(kid="rsa-2"))), 401)
    assert time.monotonic() - started < idp.delay_s
    asked = dict(idp.hits)
    started = time.monotonic()
    assert client.get("/args", headers=bearer(idp.token(kid="rsa-1"))).status_code == 200
    assert idp.hits == asked and time.monotonic() - started < idp.delay_s  # a cached key never waits for it
    idp.delay_s = 0.0


def test_the_subject_is_recorded_as_a_key_name_and_the_token_never(token_app, idp, monkeypatch, registry_root,
                                                                     make_app):
    lines: list[bytes] = []
    monkeypatch.setattr(access._writer, "write", lines.append)
    root, first, second = registry_root
    app = make_app(ARTIFACTS_DIR=str(root), AUTH="admin", METRICS=False, LOG_LEVEL="INFO", **idp.settings())
    client = app.test_client()
    admin = idp.token(sub="7f1c2a-ops", roles=["tagifai:admin"])
    assert client.put("/models/default", json={"version": second, "reason": "better"},
                      headers=bearer(admin)).status_code == 200
    changes = client.get("/models/history", headers=bearer(admin)).get_json()["data"]["changes"]
    assert (changes[0]["action"], changes[0]["key_name"]) == ("set_default", "7f1c2a-ops")
    text = b"".join(lines).decode()
    assert [json.loads(line)["key_name"] for line in text.splitlines()] == ["7f1c2a-ops", "7f1c2a-ops"]
    assert admin not in text and admin.split(".")[2] not in text


def test_settings_that_would_weaken_the_check_are_refused(make_app, idp):
    for algorithms in ("HS256", "RS256,none", "none", ""):
        with pytest.raises(ValueError, match="only asymmetric algorithms"):
            make_app(AUTH="all", **idp.settings(OIDC_ALGORITHMS=algorithms))
    with pytest.raises(ValueError, match="set together"):
        make_app(AUTH="all", OIDC_ISSUER=idp.issuer)
    with pytest.raises(ValueError, match="https://"):
        make_app(AUTH="all", OIDC_ISSUER="http://idp.example.com/realms/x", OIDC_AUDIENCE="a")


def test_a_discovery_document_naming_another_issuer_is_not_trusted(idp):
    verifier = oidc.Verifier(idp.issuer + "/", idp.audience, refetch_s=0, timeout_s=1)  # not the issuer it names
    failures = []
    verifier.on_fetch_error = lambda: failures.append(1)
    with pytest.raises(oidc.ProviderUnavailableError):
        verifier.verify(jwt.encode(idp.claims(), idp.keys["rsa-1"], algorithm="RS256", headers={"kid": "rsa-1"}))
    assert failures == [1]
