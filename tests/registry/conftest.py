"""The registry's state in a store of each kind: every test here runs on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import pytest

from tagifai_api.auth.keys import KeyStore
from tagifai_api.store.database import Store
from tagifai_api.store.registry import Registry


@pytest.fixture
def registry_state(store_url, registry_root) -> tuple:
    """``(root, first, second, url)``: the two-version folder, its state in the store at ``url`` (the
    first version the default, as training made it; no history, no shadow)."""
    root, first, second = registry_root
    store = Store(store_url)
    store.upgrade()
    Registry(store, root).set_default(first, verifier=lambda _: None, reason="trained")
    store.close()
    return root, first, second, store_url


@pytest.fixture
def registry(registry_state) -> Registry:
    """The registry as the command line or another replica sees it: a store connection of its own."""
    root, _, _, url = registry_state
    opened = Registry(Store(url), root)
    yield opened
    opened.store.close()


@pytest.fixture
def keys(registry_state) -> dict:
    """An admin key (``ops``) and a predict key (``reader``) in the store."""
    store = Store(registry_state[3])
    keys = KeyStore(store)
    made = {"admin": keys.create("ops", "admin"), "predict": keys.create("reader", "predict")}
    store.close()
    return made
