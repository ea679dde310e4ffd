"""Identity-provider tokens under real Gunicorn with 2 workers: each worker fetches the keys on its
own, tokens pass on both, every attack is refused on both with its status, the access line records
the token's subject, and a provider that goes down leaves cached keys working."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import requests

from tests.helpers import IdentityProvider, gunicorn, one_session_per_worker

pytestmark = pytest.mark.integration


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_under_gunicorn_with_two_workers(artifacts_dir, tmp_path):
    idp = IdentityProvider()
    models = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, models, symlinks=True)
    idp.rotate("rsa-2")
    idp.published.remove("rsa-2")  # rotated in later
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_OIDC_ISSUER": idp.issuer, "TAGIFAI_OIDC_AUDIENCE": idp.audience,
           "TAGIFAI_OIDC_REFETCH_S": "1", "TAGIFAI_OIDC_TIMEOUT_S": "0.5"}
    log = tmp_path / "gunicorn.log"
    try:
        with gunicorn(models, workers=2, env=env, log_path=log) as server:
            sessions = one_session_per_worker(server.url)
            predict = idp.token(sub="svc-reader")
            admin = idp.token(sub="ops-person", roles=["tagifai:admin"])
            now = int(time.time())
            head, _, sig = predict.split(".")
            pad = 5400
            while len(huge := idp.token(pad="x" * pad)) < 8050:  # over the app's 8,000, under Gunicorn's header limit
                pad += 20
            attacks = {
                "expired": (idp.token(exp=now - 120, iat=now - 600, nbf=None), 401),
                "not yet valid": (idp.token(nbf=now + 600), 401),
                "wrong issuer": (idp.token(iss="https://evil.example"), 401),
                "wrong audience": (idp.token(aud="another-api"), 401),
                "tampered payload": (".".join([admin.split(".")[0], predict.split(".")[1][:-4] + "AAAA", sig]), 401),
                "unknown key id": (idp.token(headers={"kid": "nobody"}), 401),
                "huge token (over 8,000 characters)": (huge, 401),
            }
            for session in sessions:
                pid = session.get(f"{server.url}/health/ready", timeout=5).json()["data"]["pid"]
                r = session.post(f"{server.url}/predict", json={"texts": [{"text": "Text classification."}]},
                                 headers=bearer(predict), timeout=10)
                assert r.status_code == 200, (pid, r.text)
                assert session.get(f"{server.url}/models/history", headers=bearer(predict),
                                   timeout=5).status_code == 403
                assert session.get(f"{server.url}/models/history", headers=bearer(admin),
                                   timeout=5).status_code == 200
                for case, (token, status) in attacks.items():
                    r = session.get(f"{server.url}/args", headers=bearer(token), timeout=5)
                    assert r.status_code == status, (pid, case, r.text)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer") and token not in r.text
                    assert set(r.json()) == {"message", "method", "status-code", "timestamp", "url", "request-id"}
                r = session.get(f"{server.url}/args", headers={"X-API-Key": predict}, timeout=5)
                assert r.status_code == 401, (pid, "token in X-API-Key")
            # a header over Gunicorn's limit never reaches the app
            r = requests.get(f"{server.url}/args", headers=bearer(idp.token(pad="x" * 20_000)), timeout=5)
            assert r.status_code == 431 and r.json()["status-code"] == 431
            # rotated at the provider: each worker refetches once and accepts the new key
            time.sleep(1.1)
            idp.published = ["rsa-2"]
            rotated = idp.token(kid="rsa-2")
            for session in sessions:
                assert session.get(f"{server.url}/args", headers=bearer(rotated), timeout=5).status_code == 200
            # the provider goes down: the cached key keeps passing on both workers, others are 401
            idp.down = True
            idp.rotate("rsa-3")
            time.sleep(1.1)
            for session in sessions:
                assert session.get(f"{server.url}/args", headers=bearer(rotated), timeout=5).status_code == 200
                assert session.get(f"{server.url}/args", headers=bearer(idp.token(kid="rsa-3")),
                                   timeout=5).status_code == 401
    finally:
        idp.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines() if '"tagifai_api.access"' in line]
    assert {line["key_name"] for line in lines if line["path"] == "/predict"} == {"svc-reader"}
    assert {line["key_name"] for line in lines if line["path"] == "/models/history" and line["status"] == 200} == {
        "ops-person"}
    assert predict not in log.read_text() and admin not in log.read_text()
    assert len({line["pid"] for line in lines}) == 2
