"""Per-request cost of the API key check: `python -m benchmarks.auth_cost`.

Three figures, each the best of several ``timeit`` repeats (the least disturbed estimate of a
CPU-bound micro-benchmark on a shared machine):

- ``lookup``: :meth:`KeyRing.lookup` alone (a SHA-256, then one constant-time comparison per key
  the worker holds), with 1, 10 and 100 keys in the store;
- ``check``: the whole check a request pays in mode ``all`` (reading the header, the route's needs,
  the look-up), run inside a request context;
- ``request``: ``GET /args/threshold`` through the app in-process (Flask's test client) with a valid
  Bearer key, in modes ``off``, ``admin`` (no check on that route) and ``all``.

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


def measure(tmp: Path, artifacts_dir: Path) -> dict:
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
        check = _best_us(guard._check_request, 20_000)
    request = {}
    for mode, app in apps.items():
        client = app.test_client()
        assert client.get("/args/threshold", headers=headers).status_code == 200
        request[f"mode_{mode}"] = _best_us(lambda c=client: c.get("/args/threshold", headers=headers), 500)
    for app in apps.values():
        app.extensions["tagifai_auth"].ring.close()
        app.extensions["tagifai"].close()
        app.extensions["tagifai"].service.registry.store.close()
    store.close()
    return {"lookup_us": lookup, "check_us": check, "request_us": request}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), opts.artifacts), indent=2))


if __name__ == "__main__":
    main()
