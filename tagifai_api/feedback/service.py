"""Turning corrections into stored feedback: find the logged prediction each one is about, keep one
row per corrected prediction or text, and say per item what happened."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from tagifai_api.feedback import rollback
from tagifai_api.feedback.quality import quality
from tagifai_api.serving.predlog import text_hash
from tagifai_api.serving.service import ModelService
from tagifai_api.store.database import Store


def _subject(text: str) -> str:
    """What a hand-tagged text's correction is stored under: its SHA-256, where the log's cheaper hash
    would let a key holder make a text whose correction replaces another's."""
    return "t:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class FeedbackService:
    """Feedback in ``store``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def find(self, items: Sequence[dict]) -> dict[tuple[str, int], dict]:
        """The logged prediction each item of ``items`` that names one is about, by ``(request id, index)``:
        its row tells which version made it (whose classes its tag must be one of)."""
        return self.store.find_predictions([(item["request_id"], item["index"]) for item in items
                                            if "request_id" in item])

    def record(self, items: Sequence[dict], key_name: str | None,
               logged: dict[tuple[str, int], dict] | None = None) -> list[dict]:
        """Store the corrections (validated items of ``POST /feedback``; ``logged``: what :meth:`find`
        answered for them, else it is asked); one report per item, in order: ``status`` (``created``,
        ``updated``, ``unknown_request``, ``unknown_index``), and for a prediction, its ``model_version``,
        ``predicted`` tag and whether its text was kept."""
        if logged is None:
            logged = self.find(items)
        known_requests = {rid for rid, _ in logged}
        now = time.time()
        reports: list[dict] = []
        rows: list[dict] = []
        for item in items:
            if "text" in item:
                rows.append({"subject": _subject(item["text"]), "at": now, "source": "text", "request_id": None,
                             "position": None, "model_version": None, "predicted": None, "tag": item["tag"],
                             "text_hash": text_hash(item["text"]), "text": item["text"], "key_name": key_name})
                reports.append({"text_kept": True})
                continue
            key = (item["request_id"], item["index"])
            row = logged.get(key)
            if row is None:
                status = "unknown_index" if key[0] in known_requests else "unknown_request"
                reports.append({"status": status})
                continue
            rows.append({"subject": f"p:{key[0]}:{key[1]}", "at": now, "source": "prediction",
                         "request_id": key[0], "position": key[1], "model_version": row["model_version"],
                         "predicted": row["predicted"], "tag": item["tag"], "text_hash": row["text_hash"],
                         "text": row["text"], "key_name": key_name})
            reports.append({"model_version": row["model_version"], "predicted": row["predicted"],
                            "text_kept": row["text"] is not None})
        outcomes = iter(self.store.record_feedback(rows))
        for report in reports:
            if "status" not in report:
                report["status"] = next(outcomes)
        return reports

    def quality(self, version: str, labels: Sequence[str], days: float) -> dict:
        """The live accuracy of ``version``: over all its corrected predictions, and the last ``days``."""
        return {
            "all": quality(self.store.feedback_outcomes(version), labels),
            "recent": {"days": days, **quality(self.store.feedback_outcomes(version, time.time() - days * 86400),
                                               labels)},
        }

    def watch_default(self, service: ModelService, min_feedback: int) -> dict | None:
        """Roll the default back if it was promoted and live feedback now shows it worse than the version
        it replaced (see :mod:`tagifai_api.feedback.rollback`); what was done, if anything."""

        def back(promoted: str, reason: str) -> tuple[str | None, str]:
            return service.rollback(None, reason, expect=promoted, action="auto_rollback")

        return rollback.watch(self.store, back, min_feedback)
