"""What retraining reads from the feedback: one row per text (the newest correction wins, duplicates
count once, a text not kept cannot be trained on) and the newest share held out, by time."""

from __future__ import annotations

import time

import pytest

from tagifai_api.feedback.service import FeedbackService
from tagifai_api.retrain import labelled
from tagifai_api.store.database import Store


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'state.db'}")
    s.upgrade()
    yield s
    s.close()


def _log(store: Store, request_id: str, texts: list[str | None]) -> None:
    """A logged /predict answer (``None``: a text the log did not keep, as in ``meta`` mode)."""
    items = [("mlops", 0.9, False, None, 10, 2, 0, f"sha-{request_id}-{i}", text) for i, text in enumerate(texts)]
    store.log_requests([(time.time(), request_id, "v1", None, items)])


def test_the_newest_correction_of_a_text_wins_and_duplicates_count_once(store):
    feedback = FeedbackService(store)
    _log(store, "r1", ["Object detection with YOLO", None])
    feedback.record([{"text": "Object detection with YOLO", "tag": "computer-vision"}], "a")
    feedback.record([{"request_id": "r1", "index": 0, "tag": "other"}], "b")  # the same text, from the log
    feedback.record([{"text": "object   DETECTION with yolo ", "tag": "mlops"}], "c")  # spacing and case differ
    feedback.record([{"request_id": "r1", "index": 1, "tag": "mlops"}], "d")  # its text was not kept
    feedback.record([{"text": "BERT for question answering", "tag": "natural-language-processing"}], "e")
    rows, duplicates, without_text = labelled.unique_rows(store)
    assert [(r["text"], r["tag"]) for r in rows] == [("object   DETECTION with yolo ", "mlops"),
                                                     ("BERT for question answering", "natural-language-processing")]
    assert (duplicates, without_text) == (2, 1)
    # correcting the first one again makes it the newest, with its new tag
    feedback.record([{"text": "Object detection with YOLO", "tag": "computer-vision"}], "a")
    rows, duplicates, _ = labelled.unique_rows(store)
    assert [(r["text"], r["tag"]) for r in rows][-1] == ("Object detection with YOLO", "computer-vision")
    assert len(rows) == 2 and duplicates == 2


def test_the_newest_fifth_by_time_is_held_out_and_never_trained_on(store):
    feedback = FeedbackService(store)
    for i in range(10):
        feedback.record([{"text": f"project number {i}", "tag": "mlops"}], None)
    split = labelled.collect(store, 0.2)
    assert [r["text"] for r in split.used] == [f"project number {i}" for i in range(8)]
    assert [r["text"] for r in split.held_out] == ["project number 8", "project number 9"]
    lineage = split.lineage()
    assert (lineage["texts"], lineage["used"], lineage["held_out"]) == (10, 8, 2)
    assert lineage["trained_until"] == {"at": split.used[-1]["at"], "id": split.used[-1]["id"]}
    assert len(lineage["sha256"]) == 64 and labelled.collect(store, 0.2).sha256 == lineage["sha256"]
    # one request's corrections share a time: their order is the order they came in
    feedback.record([{"text": f"batch text {i}", "tag": "other"} for i in range(5)], None)
    split = labelled.collect(store, 0.2)
    assert [r["text"] for r in split.held_out] == ["batch text 2", "batch text 3", "batch text 4"]
    assert labelled.collect(store, 0.0).held_out == []
    with pytest.raises(ValueError, match="below 1"):
        labelled.collect(store, 1.0)


def test_a_candidate_is_judged_later_on_what_it_held_out_and_everything_corrected_since(store):
    feedback = FeedbackService(store)
    for i in range(10):
        feedback.record([{"text": f"project number {i}", "tag": "mlops"}], None)
    split = labelled.collect(store, 0.2)
    feedback.record([{"text": "project number 3", "tag": "other"}], None)  # trained on, then corrected
    feedback.record([{"text": "a new project", "tag": "other"}], None)
    later = [r["text"] for r in labelled.after(store, split.trained_until)]
    assert later == ["project number 8", "project number 9", "project number 3", "a new project"]
    assert len(labelled.after(store, None)) == 11
