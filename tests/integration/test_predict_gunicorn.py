"""/predict under real Gunicorn (2 workers) with concurrent clients: micro-batches form, and every
request gets exactly its own answers, in order, equal to the model's in-process answers."""

from __future__ import annotations

import json
import random
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tagifai_api.ml import data
from tagifai_api.ml.predict import Predictor
from tests.helpers import gunicorn, load_default, scrape, value

pytestmark = pytest.mark.integration

CLIENTS = 24
REQUESTS_PER_CLIENT = 15


def test_concurrent_clients_get_their_own_answers_in_order(artifacts_dir, dataset, tmp_path):
    texts = [data.join_text(t, d) for t, d in zip(dataset["title"], dataset["description"])]
    expected = {t: p for t, p in zip(texts, Predictor(load_default(artifacts_dir)).predict(texts))}
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "TAGIFAI_BATCH_MAX_WAIT_MS": "5",
           "TAGIFAI_CACHE_SIZE": "0"}

    def client(seed: int) -> list[tuple[int, str | None]]:
        rng = random.Random(seed)
        failures = []
        with requests.Session() as http:
            for i in range(REQUESTS_PER_CLIENT):
                sent = rng.sample(texts, rng.choice([1, 1, 1, 3, 100]))  # mostly single texts, some batches
                request_id = f"client-{seed}-{i}"
                r = http.post(f"{server.url}/predict", json={"texts": [{"text": t} for t in sent]},
                              headers={"X-Request-ID": request_id}, timeout=30)
                body = r.json()
                if r.status_code != 200 or body["request-id"] != request_id:
                    failures.append((r.status_code, body.get("message")))
                    continue
                got = body["data"]["predictions"]
                if [p["input_text"] for p in got] != sent:
                    failures.append((200, "answers out of order or mixed with another request's"))
                for text, p in zip(sent, got):
                    want = expected[text]
                    if p["predicted_tag"] != want["predicted_tag"] or abs(p["confidence"] - want["confidence"]) > 1e-9:
                        failures.append((200, f"wrong prediction for {text[:40]!r}"))
        return failures

    with gunicorn(artifacts_dir, workers=2, env=env) as server:
        workers = {p.pid for p in psutil.Process(server.proc.pid).children()}
        assert len(workers) == 2
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(client, range(CLIENTS)))
        # a malformed body in the middle of all this is answered, and both workers keep serving
        bad = requests.post(f"{server.url}/predict", data=b'{"texts": [', headers={"Content-Type": "application/json"},
                            timeout=10)
        assert bad.status_code == 400 and bad.json()["status-code"] == 400
        samples = scrape(server.url)
        # the same two workers: none died or was replaced
        assert {p.pid for p in psutil.Process(server.proc.pid).children()} == workers

    assert [f for r in results for f in r] == []
    total = CLIENTS * REQUESTS_PER_CLIENT
    assert value(samples, "tagifai_request_texts_count") == total
    batches = value(samples, "tagifai_batch_requests_count")
    coalesced = value(samples, "tagifai_batch_requests_sum")
    assert coalesced == total  # every request was run exactly once
    assert batches < total, "concurrent requests never shared a model call"


def raw_request(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library would send these) and read the whole answer."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 400),
        (b"NOT-HTTP\r\n\r\n", 400),
    ],
)
def test_requests_gunicorn_cannot_parse_get_the_json_envelope(artifacts_dir, data, status):
    with gunicorn(artifacts_dir, workers=1) as server:
        got, headers, body = raw_request(server.port, data)
        envelope = json.loads(body)
        assert got == envelope["status-code"] >= status
        assert headers["Content-Type"] == "application/json"
        assert (headers["X-Content-Type-Options"], headers["Cache-Control"]) == ("nosniff", "no-store")
        assert envelope["request-id"] == headers["X-Request-ID"]
        assert {"message", "method", "timestamp", "url"} <= set(envelope)
        # and the worker is still there
        assert requests.get(f"{server.url}/health/live", timeout=5).status_code == 200
