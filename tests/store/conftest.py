"""The store tests' fixture: an upgraded store on each database of ``store_url`` (SQLite, PostgreSQL)."""

from __future__ import annotations

import pytest

from tagifai_api.store.database import Store


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    s.upgrade()
    yield s
    s.close()
