"""Slow clients against real Gunicorn (2 workers, ``make serve``'s settings, short deadlines): 64
slow-header and 16 slow-body connections dripping while 16 normal clients post single-text /predict.
``python -m benchmarks.slow_clients`` runs the same attack for 30 s with the default deadlines."""

from __future__ import annotations

import pytest

from benchmarks.slow_clients import BODY, HEADERS, SLACK_S, Attack, NormalClients, latency_figures
from tests.helpers import gunicorn, scrape, value

pytestmark = pytest.mark.integration

HEADER_TIMEOUT, BODY_TIMEOUT = 2, 3
SECONDS = 5.0  # of normal load alone, then under attack


def test_slow_clients_neither_starve_the_workers_nor_outlive_their_deadlines(artifacts_dir, tmp_path):
    env = {"GUNICORN_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "GUNICORN_BODY_TIMEOUT": str(BODY_TIMEOUT)}
    with gunicorn(artifacts_dir, workers=2, env=env, log_path=tmp_path / "gunicorn.log") as server:
        quiet = latency_figures(NormalClients(server.port).run_for(SECONDS))
        attack = Attack(server.port, headers=64, body=16, drip_s=SECONDS + 1, interval_s=0.5,
                        wait_s=BODY_TIMEOUT + 2 * SLACK_S)
        attack.start()
        assert attack.started.wait(30)
        under = latency_figures(NormalClients(server.port).run_for(SECONDS))
        attack.join(60)
        counted = scrape(server.url)
    slow = attack.figures(HEADER_TIMEOUT, BODY_TIMEOUT)
    print(f"without the attack {quiet}\nwith it {under}\nslow connections {slow}")

    assert quiet["not_ok"] == {} and under["not_ok"] == {}  # every normal request answered 200
    assert quiet["ok"] > 100 and under["ok"] > 100
    assert under["p99_ms"] <= 2 * quiet["p99_ms"]
    # 64 slow-header connections at a time, each replaced when closed: about 64 every 2 s
    assert slow[HEADERS]["connections"] >= 64 * (SECONDS // HEADER_TIMEOUT)
    for kind in (HEADERS, BODY):
        closed = slow[kind]
        assert closed["not_closed"] == 0 and closed["closed_before_deadline"] == 0, closed
        assert closed["closed_within_deadline_plus_1s"] == closed["connections"], closed
        assert closed["answers"] == {"408": closed["connections"]}, closed
        assert value(counted, "tagifai_slow_clients_total", {"phase": kind}) == closed["connections"]
    assert value(counted, "tagifai_slow_clients_total", {"phase": "evicted"}) == 0
