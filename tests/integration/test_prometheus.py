"""A real Prometheus scrapes real Gunicorn: the exposition parses and the counts arrive intact."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from tests.helpers import free_port, gunicorn, require_binary, stop, wait_http

TEXTS = ["Transfer learning with transformers for text classification.", "GANs that generate faces.",
         "Serving models with Kubernetes and monitoring drift."]


def query(base: str, promql: str) -> float | None:
    """The single value of an instant query, or None while there is no sample yet."""
    r = requests.get(f"{base}/api/v1/query", params={"query": promql}, timeout=5)
    r.raise_for_status()
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.mark.integration
def test_prometheus_scrapes_the_predictions(artifacts_dir, tmp_path):
    binary = require_binary("prometheus")
    with gunicorn(artifacts_dir, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}) as server:
        n = 10
        for _ in range(n):
            r = requests.post(f"{server.url}/predict", json={"texts": [{"text": t} for t in TEXTS]},
                              headers={"Connection": "close"}, timeout=10)
            assert r.status_code == 200

        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: tagifai\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n"
        )
        log = open(tmp_path / "prometheus.log", "wb")
        prom = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/-/ready", timeout_s=20, proc=prom)
            deadline = time.monotonic() + 30
            predictions = None
            while time.monotonic() < deadline:
                predictions = query(base, "sum(tagifai_predictions_total)")
                if predictions == n * len(TEXTS):
                    break
                time.sleep(0.25)
            assert predictions == n * len(TEXTS), (tmp_path / "prometheus.log").read_text()[-2000:]
            assert query(base, 'up{job="tagifai"}') == 1
            count = query(base, 'sum(tagifai_http_request_duration_seconds_count{endpoint="predict.predict"})')
            assert count == n
        finally:
            stop(prom)
            log.close()
