"""Per-request cost of the API key check: `python -m benchmarks.auth_cost`.

Three figures, each the best of several ``timeit`` repeats (the least disturbed estimate of a
CPU-bound micro-benchmark on a shared machine):

- ``lookup``: :meth:`KeyRing.lookup` alone (a SHA-256, then one constant-time comparison per stored
  key), with 1, 10 and 100 keys in the file;
- ``check``: the whole check a request pays in mode ``all`` (reading the header, the route's needs,
  the look-up), run inside a request context;
- ``request``: ``GET /args/threshold`` through the app in-process (Flask's test client) with a valid
  Bearer key, in modes ``off``, ``admin`` (no check on that route) and ``all``.
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

REPEATS = 7


def _best_us(fn, number: int) -> float:
    return round(min(timeit.repeat(fn, number=number, repeat=REPEATS)) / number * 1e6, 2)


def measure(tmp: Path, artifacts_dir: Path) -> dict:
    from tagifai_api import create_app
    from tagifai_api.auth import guard

    lookup = {}
    for n in (1, 10, 100):
        store = KeyStore(tmp / f"keys-{n}.json")
        keys = [store.create(f"k{i}", "predict") for i in range(n)]
        ring = KeyRing(store.path)
        lookup[f"{n}_keys"] = _best_us(lambda r=ring, k=keys[-1]: r.lookup(k), 20_000)

    key = KeyStore(tmp / "keys-1.json").create("bench", "predict")
    headers = {"Authorization": f"Bearer {key}"}
    apps = {mode: create_app({"ARTIFACTS_DIR": str(artifacts_dir), "AUTH": mode, "API_KEYS_FILE": str(tmp / "keys-1.json"),
                              "LOG_LEVEL": "WARNING", "METRICS": False, "BATCHING": False})
            for mode in ("off", "admin", "all")}
    with apps["all"].test_request_context("/args/threshold", headers=headers):
        check = _best_us(guard._check_request, 20_000)
    request = {}
    for mode, app in apps.items():
        client = app.test_client()
        assert client.get("/args/threshold", headers=headers).status_code == 200
        request[f"mode_{mode}"] = _best_us(lambda c=client: c.get("/args/threshold", headers=headers), 500)
    return {"lookup_us": lookup, "check_us": check, "request_us": request}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), opts.artifacts), indent=2))


if __name__ == "__main__":
    main()
