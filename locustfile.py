"""Locust users for the TagIfAI API: mostly single-text predictions, some batches, a few model reads.

Texts are real project descriptions from data/dataset.csv, so the prediction cache sees a realistic
mix of repeats. Run it bounded with ``make loadtest`` (benchmarks/loadtest.py) or directly:
``locust -f locustfile.py --host http://localhost:8000``.
"""

from __future__ import annotations

import csv
import random
import uuid
from pathlib import Path

import gevent
from locust import FastHttpUser, between, events, task

DATASET = Path(__file__).resolve().parent / "data" / "dataset.csv"
PERFORMANCE_FILTERS = [None, "overall", "class", "slices"]


def _load_texts() -> list[str]:
    with DATASET.open(newline="", encoding="utf-8") as f:
        texts = [f"{row['title']} {row['description']}".strip() for row in csv.DictReader(f)]
    return [t[:10_000] for t in texts if t]


TEXTS = _load_texts()


@events.test_stop.add_listener
def _final_csv(environment, **_kwargs) -> None:
    """Locust rewrites its CSV files once a second and not at exit: wait one more pass so they hold the final counts."""
    if getattr(environment.parsed_options, "csv_prefix", None):
        gevent.sleep(1.5)


class TagifaiUser(FastHttpUser):
    """A client of the API; every request carries its own X-Request-ID, as a real client's would."""

    wait_time = between(0.05, 0.5)

    def _headers(self) -> dict[str, str]:
        return {"X-Request-ID": f"locust-{uuid.uuid4().hex}"}

    def _predict(self, texts: list[str], name: str) -> None:
        body = {"texts": [{"text": t} for t in texts]}
        with self.client.post("/predict", json=body, headers=self._headers(), name=name,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(response.error or f"status {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                predictions = response.json()["data"]["predictions"]
            except (ValueError, KeyError, TypeError):
                response.failure(f"not a predictions envelope: {(response.text or '')[:200]}")
                return
            if len(predictions) != len(texts):
                response.failure(f"{len(predictions)} predictions for {len(texts)} texts")

    @task(20)
    def predict_one(self) -> None:
        self._predict([random.choice(TEXTS)], "/predict [1 text]")

    @task(3)
    def predict_batch(self) -> None:
        self._predict(random.sample(TEXTS, random.randint(10, 100)), "/predict [10-100 texts]")

    @task(2)
    def performance(self) -> None:
        selector = random.choice(PERFORMANCE_FILTERS)
        params = {"filter": selector} if selector else None
        self.client.get("/performance", params=params, headers=self._headers(), name="/performance")

    @task(1)
    def args(self) -> None:
        if random.random() < 0.5:
            self.client.get("/args", headers=self._headers(), name="/args")
        else:
            self.client.get("/args/threshold", headers=self._headers(), name="/args/<arg>")
