"""The prediction log's writer: what it holds when the process exits, texts the store could not take,
retention without traffic, and the bound on what it holds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from tagifai_api.serving.predlog import PredictionLog, text_hash
from tagifai_api.store.database import Store
from tests.helpers import ROOT, wait_until


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


class _Counts:
    def token_stats(self, cleaned):
        return len(cleaned.split()), 0


def _answers(n: int) -> list[dict]:
    return [{"predicted_tag": "mlops", "confidence": 0.9, "low_confidence": False} for _ in range(n)]


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
def test_a_kept_text_with_a_nul_or_a_lone_surrogate_is_written_and_so_is_its_batch(store_url):
    """PostgreSQL refuses NUL in text: one such text used to fail the whole batch written with it."""
    store = Store(store_url)
    store.upgrade()
    log = PredictionLog(store, keep_texts=True, interval_s=3600)
    try:
        texts = ["a NUL \x00 inside", "a lone \ud800 surrogate", "plain"]
        log.add("odd", "v1", texts, texts, _answers(3), _Counts())
        log.add("next", "v1", ["fine"], ["fine"], _answers(1), _Counts())
        log.flush()
        assert (log.written, log.dropped) == (4, 0)
        rows = {(r["request_id"], r["position"]): r for r in store.predictions()}
        assert [rows[("odd", i)]["text"] for i in range(3)] == ["a NUL \ufffd inside", "a lone ? surrogate", "plain"]
        assert [rows[("odd", i)]["text_hash"] for i in range(3)] == [text_hash(t) for t in texts]  # as sent
        assert [rows[("odd", i)]["text_length"] for i in range(3)] == [len(t) for t in texts]
        assert rows[("next", 0)]["text"] == "fine"
        assert len(store.drift_window("v1", 10)["tags"]) == 4  # PostgreSQL reads the items as jsonb
    finally:
        log.close()
        store.close()


def test_old_rows_are_deleted_with_the_log_off_and_no_answer_to_log(tmp_path):
    """The writer starts with the worker, not on its first answer: an idle worker, or one whose log is
    now off, still deletes what an earlier setting recorded once it is past the retention."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.upgrade()
    item = ("mlops", 0.9, False, None, 10, 2, 0, "0" * 32, None)
    store.log_requests([(time.time() - 2 * 86400, "old", "v1", None, [item]),
                        (time.time(), "recent", "v1", None, [item])])
    log = PredictionLog(store, record=False, days=1, interval_s=0.05)
    try:
        wait_until(lambda: [r["request_id"] for r in store.predictions()] == ["recent"], timeout_s=10,
                   what="the row past the retention deleted")
    finally:
        log.close()
        store.close()


def test_the_queue_is_bounded_in_bytes_whatever_the_texts(tmp_path):
    """Kept texts of 10,000 characters fill the queue far sooner than the hashes alone."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.upgrade()
    log = PredictionLog(store, keep_texts=True, queue_bytes=100_000, interval_s=3600)
    try:
        long = ["x" * 10_000] * 4
        for i in range(5):  # 40,000 characters a request: the third is queued (and passes the bound), not the rest
            log.add(f"r{i}", "v1", long, long, _answers(4), _Counts())
        log.flush()
        assert (log.written, log.dropped) == (12, 8)
    finally:
        log.close()
        store.close()
