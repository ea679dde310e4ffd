"""Per-request cost of the API key check: `python -m benchmarks.auth_cost`.

Three figures, each the best of several ``timeit`` repeats (the least disturbed estimate of a
CPU-bound micro-benchmark on a shared machine):

- ``lookup``: :meth:`KeyRing.lookup` alone (a SHA-256, then one constant-time comparison per key
  the worker holds), with 1, 10 and 100 keys in the store;
- ``check``: the whole check a request pays in mode ``all`` (reading the header, the route's needs,
  the look-up), run inside a request context;
- ``request``: ``GET /args/threshold`` through the app in-process (Flask's test client) with a valid
  Bearer key, in modes ``off``, ``admin`` (no check on that route) and ``all``;
- ``token``: the same for an identity provider's access token (RS256 and ES256), its signing key
  cached: :meth:`Verifier.verify` alone, the whole check in mode ``all``, and the request in mode
  ``all``. The provider is a stand-in on 127.0.0.1 (a discovery document and a JWKS served by the
  standard library); the keys are made here.

Every store is a scratch SQLite file in a temporary directory (the keys are never written to the
service's own store); the apps serve the newest version under ``--artifacts``. A request never
reads the store: each worker holds the keys, and its watcher polls the store once a second apart
from requests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tagifai_api.auth.keys import KeyRing, KeyStore  # noqa: E402
from tagifai_api.store.database import Store  # noqa: E402

REPEATS = 7


def _best_us(fn, number: int) -> float:
    return round(min(timeit.repeat(fn, number=number, repeat=REPEATS)) / number * 1e6, 2)


def _scratch_store(path: Path) -> Store:
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    return store


class _Provider:
    """A discovery document and a key set on 127.0.0.1, with an RSA and an EC signing key."""

    def __init__(self) -> None:
        import http.server
        import threading

        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from jwt.algorithms import ECAlgorithm, RSAAlgorithm

        self.keys = {"rs": rsa.generate_private_key(public_exponent=65537, key_size=2048),
                     "es": ec.generate_private_key(ec.SECP256R1())}
        jwks = {"keys": [{**RSAAlgorithm.to_jwk(self.keys["rs"].public_key(), as_dict=True), "kid": "rs"},
                         {**ECAlgorithm.to_jwk(self.keys["es"].public_key(), as_dict=True), "kid": "es"}]}
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks"} \
                    if self.path.endswith("openid-configuration") else jwks
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, kid: str) -> str:
        import time

        import jwt

        now = int(time.time())
        claims = {"iss": self.issuer, "aud": "tagifai-api", "sub": "bench", "iat": now, "exp": now + 3600,
                  "roles": ["tagifai:predict"]}
        return jwt.encode(claims, self.keys[kid], algorithm={"rs": "RS256", "es": "ES256"}[kid],
                          headers={"kid": kid})


def measure(tmp: Path, artifacts_dir: Path) -> dict:
    from flask import g

    from tagifai_api import create_app
    from tagifai_api.auth import guard
    from tagifai_api.ml import artifacts
    from tagifai_api.store.registry import Registry

    lookup = {}
    for n in (1, 10, 100):
        store = _scratch_store(tmp / f"keys-{n}.db")
        made = KeyStore(store)
        keys = [made.create(f"k{i}", "predict") for i in range(n)]
        ring = KeyRing(store, poll_s=0)
        lookup[f"{n}_keys"] = _best_us(lambda r=ring, k=keys[-1]: r.lookup(k), 20_000)
        store.close()

    store = _scratch_store(tmp / "app.db")
    versions = artifacts.list_versions(artifacts_dir)
    if not versions:
        raise SystemExit(f"error: no model version under {artifacts_dir}; train one with `make model`")
    Registry(store, artifacts_dir).set_default(versions[-1], reason="auth_cost")
    key = KeyStore(store).create("bench", "predict")
    headers = {"Authorization": f"Bearer {key}"}
    apps = {mode: create_app({"ARTIFACTS_DIR": str(artifacts_dir), "DATABASE_URL": store.url, "AUTH": mode,
                              "API_KEYS_FILE": str(tmp / "no-old-keys-file.json"), "LOG_LEVEL": "WARNING",
                              "METRICS": False, "BATCHING": False})
            for mode in ("off", "admin", "all")}
    with apps["all"].test_request_context("/args/threshold", headers=headers):
        check = _best_us(lambda: (g.pop("api_key", None), guard._check_request()), 20_000)
    request = {}
    for mode, app in apps.items():
        client = app.test_client()
        assert client.get("/args/threshold", headers=headers).status_code == 200
        request[f"mode_{mode}"] = _best_us(lambda c=client: c.get("/args/threshold", headers=headers), 500)
    token = {}
    provider = _Provider()
    apps["token"] = app = create_app({"ARTIFACTS_DIR": str(artifacts_dir), "DATABASE_URL": store.url, "AUTH": "all",
                                      "API_KEYS_FILE": str(tmp / "no-old-keys-file.json"), "LOG_LEVEL": "WARNING",
                                      "METRICS": False, "BATCHING": False, "OIDC_ISSUER": provider.issuer,
                                      "OIDC_AUDIENCE": "tagifai-api"})
    verifier = app.extensions["tagifai_auth"].verifier
    client = app.test_client()
    for kid, alg in (("rs", "RS256"), ("es", "ES256")):
        bearer = {"Authorization": f"Bearer {provider.token(kid)}"}
        assert client.get("/args/threshold", headers=bearer).status_code == 200  # fetches the keys once
        value = bearer["Authorization"].split(" ", 1)[1]
        token[alg] = {"verify_us": _best_us(lambda v=value: verifier.verify(v), 2_000)}
        with app.test_request_context("/args/threshold", headers=bearer):
            token[alg]["check_us"] = _best_us(lambda: (g.pop("api_key", None), guard._check_request()), 2_000)
        token[alg]["request_us"] = _best_us(lambda c=client, h=bearer: c.get("/args/threshold", headers=h), 500)
    token["fetches"] = verifier.fetches
    provider.server.shutdown()
    for app in apps.values():
        app.extensions["tagifai_auth"].ring.close()
        app.extensions["tagifai"].close()
        app.extensions["tagifai"].service.registry.store.close()
    store.close()
    return {"lookup_us": lookup, "check_us": check, "request_us": request, "token": token}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), opts.artifacts), indent=2))


if __name__ == "__main__":
    main()
