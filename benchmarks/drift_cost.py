"""What drift costs a scrape: `python -m benchmarks.drift_cost`.

A version is trained (with its reference profile) and the store's prediction log is filled: other
versions' traffic (``--noise`` one-text requests), then a full window of the version's own, either as
one-text requests (1,000 rows to read) or as 100-text requests whose texts are kept (``texts`` mode,
2,000 characters each: what the window must not drag along). On SQLite and, when a PostgreSQL server
can be started here (``initdb``), on a scratch PostgreSQL:

- ``window``: ``Store.drift_window`` of 1,000 texts, and the whole report (window + statistics);
- ``scrape``: ``GET /metrics`` of real Gunicorn (2 workers) with the drift window full and
  ``TAGIFAI_DRIFT_CACHE_S=0`` (every scrape reads the log), with the default cache (5 s), and with an
  empty log (what the rest of /metrics costs). Medians over ``--scrapes`` scrapes, one connection.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import save_report  # noqa: E402
from tagifai_api import settings  # noqa: E402
from tagifai_api.ml import artifacts, data  # noqa: E402
from tagifai_api.ml import train as training  # noqa: E402
from tagifai_api.monitoring.service import DriftMonitor  # noqa: E402
from tagifai_api.store.database import Store  # noqa: E402
from tagifai_api.store.registry import Registry  # noqa: E402
from tests import helpers  # noqa: E402


def _item(i: int, text: str | None = None) -> tuple:
    return (("mlops", "computer-vision", "natural-language-processing", "other")[i % 4], 0.5 + (i % 50) / 100,
            False, None, 90, 8 + i % 20, i % 5, "0" * 64, text)


def _fill(url: str, root: Path, version: str, noise: int, shape: str) -> None:
    store = Store(url)
    store.upgrade()
    Registry(store, root).seed(root)
    now = time.time()
    for start in range(0, noise, 5000):
        store.log_requests([(now - 3600 + i / 1000, f"n{i}", "v-other", None, [_item(i)])
                            for i in range(start, min(noise, start + 5000))])
    if shape == "1-text requests":
        rows = [(now + i / 1000, f"w{i}", version, None, [_item(i)]) for i in range(1000)]
    else:
        rows = [(now + i, f"w{i}", version, None, [_item(i * 100 + j, "x" * 2000) for j in range(100)])
                for i in range(10)]
    for start in range(0, len(rows), 500):
        store.log_requests(rows[start:start + 500])
    store.close()


def _median_ms(call, repeat: int) -> float:
    call()  # connections and caches warm
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def _scrape_ms(root: Path, url: str, cache_s: float, scrapes: int, tmp: Path) -> float:
    env = {"TAGIFAI_DATABASE_URL": url, "TAGIFAI_DRIFT_CACHE_S": str(cache_s), "TAGIFAI_LOG_LEVEL": "WARNING",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"metrics-{time.monotonic_ns()}")}
    with helpers.gunicorn(root, workers=2, env=env) as server:
        session = requests.Session()
        return _median_ms(lambda: session.get(f"{server.url}/metrics", timeout=30).raise_for_status(), scrapes)


def measure(url_of, root: Path, version: str, noise: int, scrapes: int, tmp: Path) -> dict:
    out = {}
    for shape in ("1-text requests", "100-text requests, texts kept"):
        url = url_of(shape)
        _fill(url, root, version, noise, shape)
        store = Store(url)
        monitor = DriftMonitor(store, root, cache_s=0.0)
        assert len(store.drift_window(version, 1000)["tags"]) == 1000
        out[shape] = {"window_ms": _median_ms(lambda s=store: s.drift_window(version, 1000), 50),
                      "report_ms": _median_ms(lambda m=monitor: m.report(version), 50)}
        store.close()
        out[shape]["scrape_ms_no_cache"] = _scrape_ms(root, url, 0.0, scrapes, tmp)
        out[shape]["scrape_ms_cached"] = _scrape_ms(root, url, 5.0, scrapes, tmp)
    empty = url_of("empty log")
    store = Store(empty)
    store.upgrade()
    Registry(store, root).seed(root)
    store.close()
    out["empty log"] = {"scrape_ms_no_cache": _scrape_ms(root, empty, 0.0, scrapes, tmp)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=int, default=100_000, help="Other versions' logged requests.")
    parser.add_argument("--scrapes", type=int, default=50)
    opts = parser.parse_args()
    result: dict = {"noise_requests": opts.noise}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "artifacts"
        trained = training.train(data.load_dataset(settings.DATA_FILE), json.loads(settings.ARGS_FILE.read_text()))
        version = artifacts.save(root, trained, artifacts.sha256_file(settings.DATA_FILE)).version
        names = iter(range(100))
        result["sqlite"] = measure(lambda shape: f"sqlite:///{tmp / f'state-{next(names)}.db'}", root, version,
                                   opts.noise, opts.scrapes, tmp)
        if shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
            import sqlalchemy

            with helpers.postgres() as pg:
                def database(shape: str) -> str:
                    name = f"bench_{next(names)}"
                    engine = sqlalchemy.create_engine(pg.url, isolation_level="AUTOCOMMIT")
                    with engine.connect() as conn:
                        conn.exec_driver_sql(f"CREATE DATABASE {name}")
                    engine.dispose()
                    return pg.url.rsplit("/", 1)[0] + f"/{name}"

                result["postgresql"] = measure(database, root, version, opts.noise, opts.scrapes, tmp)
    print(json.dumps(result, indent=2))
    path = save_report("drift", result)
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
