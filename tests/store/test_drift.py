"""What the drift statistics read from the store, on SQLite and on a real PostgreSQL: a version's
newest logged texts (whatever the requests' sizes, texts kept or not) and older versions' profiles."""

from __future__ import annotations

import pytest

from tagifai_api.store.database import StoreError


def _item(tag: str, confidence: float, tokens: int, unknown: int, text: str | None = None) -> tuple:
    """One text as the prediction log writes it (see LOG_ITEM)."""
    return (tag, confidence, confidence < 0.4, None, 40, tokens, unknown, "0" * 64, text)


def test_the_window_is_the_newest_texts_of_the_version(store):
    # requests of 3, 1 and 4 texts of v1 (the newest last), one of v2 between them
    store.log_requests([
        (100.0, "r1", "v1", None, [_item("mlops", 0.5, 10, 1), _item("mlops", 0.6, 11, 2), _item("other", 0.3, 12, 3)]),
        (101.0, "r2", "v2", None, [_item("computer-vision", 0.9, 5, 0)]),
        (102.0, "r3", "v1", None, [_item("computer-vision", 0.7, 20, 4)]),
    ])
    store.log_requests([(103.0, "r4", "v1", "v2", [_item("natural-language-processing", 0.8 + i / 100, 30 + i, i,
                                                         text=f"text {i}") for i in range(4)])])
    window = store.drift_window("v1", 6)
    # the newest request whole, then the next, then the first text of the one before
    assert window["tags"] == ["natural-language-processing"] * 4 + ["computer-vision", "mlops"]
    assert window["confidence"] == pytest.approx([0.8, 0.81, 0.82, 0.83, 0.7, 0.5])
    assert window["tokens"] == [30, 31, 32, 33, 20, 10]
    assert window["unknown"] == [0, 1, 2, 3, 4, 1]
    assert (window["first_at"], window["last_at"]) == (100.0, 103.0)

    everything = store.drift_window("v1", 1000)
    assert len(everything["tags"]) == 8 and everything["first_at"] == 100.0
    assert store.drift_window("v1", 4)["first_at"] == 103.0
    assert store.drift_window("v2", 1000)["tags"] == ["computer-vision"]
    assert store.drift_window("v9", 1000) == {"tags": [], "confidence": [], "tokens": [], "unknown": [],
                                              "first_at": None, "last_at": None}


def test_a_full_window_of_large_requests(store):
    store.log_requests([(float(i), f"r{i}", "v1", None, [_item("mlops", 0.5, 7, 1, text="x" * 2000)] * 100)
                        for i in range(12)])
    window = store.drift_window("v1", 1000)
    assert len(window["tags"]) == 1000 and window["tokens"] == [7] * 1000
    assert (window["first_at"], window["last_at"]) == (2.0, 11.0)


def test_an_older_versions_profile_is_kept_and_checked(store):
    assert store.drift_profile("v1") is None
    store.save_drift_profile("v1", {"format": 1, "texts": 3}, "a" * 64)
    store.save_drift_profile("v1", {"format": 1, "texts": 5}, "a" * 64)  # computed again: replaced
    assert store.drift_profile("v1") == {"format": 1, "texts": 5}
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE drift_profiles SET profile = replace(profile, '5', '6')")
    with pytest.raises(StoreError, match="does not match its sha256.*drift profile v1"):
        store.drift_profile("v1")
