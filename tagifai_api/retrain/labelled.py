"""The feedback a candidate learns from and is judged on: one row per text (the newest correction
wins, duplicates count once), split by time into what it trains on and what is held out."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tagifai_api.ml.text import text_key
from tagifai_api.store.database import Store


def _order(row: dict) -> tuple[float, int]:
    """Time, then the row's id: one request's corrections share a time, and keep the order they came in."""
    return row["at"], row["id"]


def unique_rows(store: Store) -> tuple[list[dict], int, int]:
    """``(rows, duplicates, without_text)``: the labelled texts of the store, one per text
    (:func:`~tagifai_api.ml.text.text_key`), the newest correction of each, oldest first; how many
    older corrections of a text that were dropped; and how many corrections have no kept text."""
    newest: dict[str, dict] = {}
    read = 0
    for row in store.labelled_texts():
        read += 1
        key = text_key(row["text"])
        if key not in newest or _order(row) >= _order(newest[key]):
            newest[key] = {**row, "key": key}
    total, _ = store.feedback_rows()
    return sorted(newest.values(), key=_order), read - len(newest), total - read


@dataclass
class Feedback:
    """The feedback of one retraining, split."""

    used: list[dict]
    held_out: list[dict]
    duplicates: int
    without_text: int
    fraction: float

    @property
    def sha256(self) -> str:
        """Checksum of what was read (text, tag and time of every row), so a lineage names its data."""
        h = hashlib.sha256()
        for row in (*self.used, *self.held_out):
            h.update(json.dumps([row["key"], row["tag"], row["at"]]).encode())
            h.update(b"\n")
        return h.hexdigest()

    @property
    def trained_until(self) -> dict | None:
        """The newest row trained on (time and id); every later one was held out or came after."""
        return {"at": self.used[-1]["at"], "id": self.used[-1]["id"]} if self.used else None

    def lineage(self) -> dict:
        return {"sha256": self.sha256, "texts": len(self.used) + len(self.held_out), "used": len(self.used),
                "held_out": len(self.held_out), "held_out_fraction": self.fraction, "duplicates": self.duplicates,
                "without_text": self.without_text, "trained_until": self.trained_until}


def collect(store: Store, fraction: float) -> Feedback:
    """The store's feedback, the newest ``fraction`` of it (by time, rounded to whole texts) held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out share must be at least 0 and below 1, got {fraction}")
    rows, duplicates, without_text = unique_rows(store)
    held = int(len(rows) * fraction + 0.5)
    cut = len(rows) - held
    return Feedback(used=rows[:cut], held_out=rows[cut:], duplicates=duplicates, without_text=without_text,
                    fraction=fraction)


def after(store: Store, trained_until: dict | None) -> list[dict]:
    """The feedback a candidate trained up to ``trained_until`` never learnt from: what was held out
    then, and every text corrected since (one row per text, the newest correction)."""
    rows, _, _ = unique_rows(store)
    if trained_until is None:
        return rows
    boundary = (trained_until["at"], trained_until["id"])
    return [row for row in rows if _order(row) > boundary]
