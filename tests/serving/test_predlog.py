"""The prediction log's writer as a process sees it: what it holds when the process exits."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tagifai_api.store.database import Store
from tests.helpers import ROOT


def test_a_process_that_exits_writes_what_its_log_still_holds(tmp_path):
    """A Gunicorn worker stopping (a reload, a recycle, a TERM) exits normally: the rows its log still
    holds are written first (the writer's next turn is an hour away here), not lost with it."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    script = textwrap.dedent(f"""
        from tagifai_api.serving.predlog import PredictionLog
        from tagifai_api.store.database import Store

        class Predictor:
            def token_stats(self, cleaned):
                return len(cleaned.split()), 0

        store = Store({url!r})
        store.upgrade()
        log = PredictionLog(store, interval_s=3600)
        log.add("exit-1", "v1", ["A text."], ["a text"],
                [{{"predicted_tag": "mlops", "confidence": 0.9, "low_confidence": False}}], Predictor())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    store = Store(url)
    try:
        rows = list(store.predictions())
    finally:
        store.close()
    assert [(r["request_id"], r["predicted"], r["tokens"]) for r in rows] == [("exit-1", "mlops", 2)]
