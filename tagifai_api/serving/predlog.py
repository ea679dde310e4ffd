"""The prediction log: every text a worker answered, written to the store off the request path.

A request appends its row (per text: the answer, hash, length, tokens, the words the model does not
know), encoded as one string, to an in-memory queue bounded in bytes; a background thread writes what
has gathered in one statement every ``interval_s``. A slow or unreachable store, or a full queue, drops
rows and counts them; it never slows or fails a request. Rows past the retention are deleted by the
same thread, hourly from the worker's start, whether or not it answers anything, and with the log
``off`` too: what an earlier setting recorded still ages out. A process that exits (a Gunicorn worker
stopping after a reload, a recycle or a TERM) writes what it still holds first; one killed outright
loses it (at most ``interval_s`` of answers).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import orjson
import xxhash

from tagifai_api.ml.predict import Prediction, Predictor
from tagifai_api.serving.forks import reset_after_fork
from tagifai_api.store.database import Store, StoreError

log = logging.getLogger(__name__)

MODES = ("off", "meta", "texts")
_PURGE_EVERY_S = 3600.0
_ERROR_LOG_INTERVAL_S = 60.0


class PredictionLog:
    """A worker's queue of answered texts and the thread that writes them.

    Args:
        store: where the rows go.
        record: record answers (modes ``meta`` and ``texts``); False (``off``) only deletes old rows.
        keep_texts: keep each text itself (mode ``texts``), not only its hash and statistics (``meta``).
        days: rows older than this are deleted.
        queue_bytes: most encoded rows waiting, in bytes (what a worker may hold while the store is slow
            or down, texts kept or not); beyond it new ones are dropped and counted.
        interval_s: how often the thread writes what has gathered.
        on_drop: told how many rows were dropped each time some are (the metrics count them).
    """

    def __init__(self, store: Store, record: bool = True, keep_texts: bool = False, days: float = 30.0,
                 queue_bytes: int = 16 << 20, interval_s: float = 0.5,
                 on_drop: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.record = record
        self.keep_texts = keep_texts
        self.days = days
        self.queue_bytes = queue_bytes
        self.interval_s = interval_s
        self.on_drop = on_drop
        self._closed = False
        self._reset()
        reset_after_fork(self._reset)
        # registered before the service's batchers, so it runs after them: what they finish is written
        atexit.register(self.close)

    def _reset(self) -> None:
        self._queue: deque = deque()
        self._queued = 0  # characters of the rows queued (read without the lock on the request path)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_purge = 0.0
        self._last_error_log = 0.0
        self.written = 0
        self.dropped = 0
        # started here, not on the first answer: an idle worker, or one with the log off, still purges
        self._thread: threading.Thread | None = None
        if not self._closed:
            self._thread = threading.Thread(target=self._run, name="tagifai-prediction-log", daemon=True)
            self._thread.start()

    def add(self, request_id: str, version: str, texts: Sequence[str], cleaned: Sequence[str],
            results: Sequence[dict], predictor: Predictor, shadow: tuple[str, list[str]] | None = None) -> None:
        """Queue one request's answers; never blocks, never raises.

        The request's row is encoded here, in the caller's thread (under a microsecond a text), and
        queued as one string: the garbage collector never looks at a string, where the answers'
        dicts, kept until the writer's next pass, were walked by every collection of a busy worker
        (with the log on, the collector's time a 100-text request was three times that with it off).
        """
        if self._queued >= self.queue_bytes:
            self._drop(len(texts))
            return
        try:
            row = self._row(time.time(), request_id, version, texts, cleaned, results, predictor, shadow)
        except Exception:  # noqa: BLE001 - the log must never fail a request
            log.exception("prediction log: a request's row could not be made")
            self._drop(len(texts))
            return
        with self._lock:
            self._queue.append(row)
            self._queued += len(row[5])

    def _drop(self, count: int) -> None:
        self.dropped += count
        if self.on_drop is not None:
            try:
                self.on_drop(count)
            except Exception:  # noqa: BLE001 - metrics must never fail a request
                log.exception("prediction log metrics failed")

    def _row(self, at: float, request_id: str, version: str, texts: Sequence[str], cleaned: Sequence[str],
             results: Sequence[dict], predictor: Predictor, shadow: tuple[str, list[str]] | None) -> tuple:
        """One request's row as :meth:`Store.log_encoded` takes it, its items encoded (see :data:`LOG_ITEM`).
        Comprehensions, not a loop: this runs for every text answered."""
        shadow_version, shadow_tags = shadow if shadow is not None else (None, None)
        digest = xxhash.xxh3_128_hexdigest
        hashes = [digest(text.encode("utf-8", "surrogatepass")) for text in texts]
        kept = _keepable(texts) if self.keep_texts else [None] * len(texts)
        tags = shadow_tags if shadow_tags is not None else [None] * len(texts)
        try:  # a Prediction brings the counts the model made on the way
            items = _items(results, tags, texts, hashes, kept)
        except AttributeError:  # explained answers come without them
            counted = [Prediction(r) for r in results]
            for p, clean in zip(counted, cleaned, strict=True):
                p.tokens, p.unknown_tokens = predictor.token_stats(clean)
            items = _items(counted, tags, texts, hashes, kept)
        return at, request_id, version, len(items), shadow_version, orjson.dumps(items).decode()

    def flush(self) -> None:
        """Write what is queued now (the thread does this every ``interval_s``)."""
        with self._lock:
            entries = list(self._queue)
            self._queue.clear()
            self._queued = 0
        if not entries:
            return
        texts = sum(row[3] for row in entries)
        try:
            self.store.log_encoded(entries)
        except StoreError as exc:
            self._drop(texts)
            now = time.monotonic()
            if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
                self._last_error_log = now
                log.error("prediction log: %d texts dropped (%s)", texts, exc)
            return
        self.written += texts

    def purge(self) -> None:
        """Delete the rows past the retention."""
        try:
            gone = self.store.purge_predictions(time.time() - self.days * 86400.0)
        except StoreError as exc:
            log.warning("prediction log: old rows not deleted this time (%s)", exc)
            return
        if gone:
            log.info("prediction log: %d rows older than %g days deleted", gone, self.days)

    def _run(self) -> None:
        while True:
            stop = self._stop.wait(self.interval_s)
            try:
                self.flush()
                if time.monotonic() >= self._next_purge:
                    self._next_purge = time.monotonic() + _PURGE_EVERY_S
                    self.purge()
            except Exception:  # noqa: BLE001 - the writer must outlive any surprise
                log.exception("prediction log writer failed")
            if stop:
                return

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        self._closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout_s)
        else:
            self.flush()


def _keepable(texts: Sequence[str]) -> Sequence[str]:
    """The texts as the store can keep them: PostgreSQL refuses NUL in text (one would fail the whole
    batch written with it), so each becomes U+FFFD; JSON cannot carry a lone surrogate, which becomes
    ``?``. The hash and length are of the text as sent."""
    if not any("\x00" in text for text in texts):
        try:
            for text in texts:
                text.encode("utf-8")
            return texts
        except UnicodeEncodeError:
            pass
    return [text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8") for text in texts]


def _items(results: Sequence[Prediction], tags: Sequence[str | None], texts: Sequence[str], hashes: Sequence[str],
           kept: Sequence[str | None]) -> list[tuple]:
    """The :data:`LOG_ITEM` tuples of one request's answers, each read where it is (no tuple of counts
    in between: that was a seventh of the row's cost)."""
    return [(r["predicted_tag"], r["confidence"], r["low_confidence"], tag, len(text), r.tokens, r.unknown_tokens,
             h, keep) for r, tag, text, h, keep in zip(results, tags, texts, hashes, kept, strict=True)]


def text_hash(text: str) -> str:
    """The hash the log keeps of a text as sent (UTF-8; a lone surrogate as it came): XXH3's 128 bits in
    hex. It tells texts apart and finds repeats; it is no secret (a guessed text can be checked against
    it) and no defence against texts made to collide, so nothing that must withstand those rests on it.
    Its one-shot call costs a third of a SHA-256 object's (0.14 against 0.43 µs a short text), and the
    hash was most of what logging a text cost."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))
