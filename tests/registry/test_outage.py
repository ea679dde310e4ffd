"""A state store that goes down (a PostgreSQL server of its own, stopped and started again): changes
answer 503 with Retry-After and change nothing, predictions go on from what each worker read,
readiness says what is wrong without failing, the failures are counted, and a worker that starts
during the outage serves the default this host last read."""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa

from tagifai_api.auth.keys import KeyStore
from tagifai_api.store.database import Store
from tagifai_api.store.registry import Registry
from tests.helpers import check_envelope, postgres, store_errors, wait_until

TEXT = {"texts": [{"text": "Transfer learning with transformers for text classification."}]}
POLL_S = 0.05
_names = itertools.count()


@pytest.fixture(scope="module")
def server():
    """A PostgreSQL cluster these tests may stop (the session's is shared with every other test)."""
    with postgres() as pg:
        yield pg


@pytest.fixture
def state(server, registry_root):
    """``(root, first, second, url, admin_key)``: a fresh database on ``server`` holding the folder's
    state (the first version the default) and an admin key; the server is running again afterwards."""
    root, first, second = registry_root
    name = f"outage_{next(_names)}"
    maintenance = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with maintenance.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    maintenance.dispose()
    url = server.url.rsplit("/", 1)[0] + f"/{name}"
    store = Store(url)
    store.upgrade()
    Registry(store, root).set_default(first, verifier=lambda _: None, reason="trained")
    key = KeyStore(store).create("ops", "admin")
    store.close()
    yield root, first, second, url, key
    if not server.running():
        server.start()


def ready(client) -> dict:
    r = client.get("/health/ready")
    return {"status": r.status_code, **r.get_json()["data"]}


def test_changes_are_refused_while_predictions_go_on_and_the_store_comes_back(make_app, server, state):
    root, first, second, url, key = state
    admin = {"Authorization": f"Bearer {key}"}
    app = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, REGISTRY_POLL_S=POLL_S)
    client = app.test_client()
    assert ready(client)["store"] == {"ok": True, "error": None}

    server.stop()
    wait_until(lambda: not ready(client)["store"]["ok"], what="readiness to report the store down")
    health = ready(client)
    assert health["status"] == 200 and health["ready"] and health["model_version"] == first
    assert "the state store is unavailable" in health["store"]["error"]
    for _ in range(3):
        r = client.post("/predict", json=TEXT)
        assert check_envelope(r, 200, "POST")["data"]["model_version"] == first
    # what this worker serves is described from what it read; the listing needs the store's history
    described = check_envelope(client.get("/models/default"), 200)["data"]
    assert described["version"] == first and described["default"] is True and described["shadow"] is False
    assert check_envelope(client.get("/models/shadow"), 200)["data"] == {"shadow": None, "shadow_agreement": None}
    listing = client.get("/models")
    assert check_envelope(listing, 503)["data"]["reason"].startswith("the state store is unavailable")
    assert listing.headers["Retry-After"] == "1"
    writes = [("put", "/models/default", {"json": {"version": second, "reason": "better"}}),
              ("post", "/models/default/rollback", {}),
              ("put", "/models/shadow", {"json": {"version": second}}),
              ("delete", "/models/shadow", {})]
    for method, path, kwargs in writes:
        # the admin key is checked against the keys this worker read: the answer is the store's 503
        r = getattr(client, method)(path, headers=admin, **kwargs)
        body = check_envelope(r, 503, method.upper())
        assert r.headers["Retry-After"] == "1" and "nothing changed" in body["message"]
    r = client.get("/models/history", headers=admin)
    assert check_envelope(r, 503)["data"]["reason"].startswith("the state store is unavailable")
    errors = store_errors(client)
    assert errors["poll"] >= 1
    assert {op: errors.get(op) for op in ("set_default", "rollback", "set_shadow", "clear_shadow")} == \
        {"set_default": 1.0, "rollback": 1.0, "set_shadow": 1.0, "clear_shadow": 1.0}

    server.start()
    wait_until(lambda: ready(client)["store"] == {"ok": True, "error": None}, what="the store to be back")
    registry = Registry(Store(url), root)
    try:
        assert registry.pointers() == (first, None) and registry.history() == []
        assert [c["action"] for c in registry.store.audit()] == ["create_key", "set_default"]
        r = client.put("/models/default", json={"version": second, "reason": "better"}, headers=admin)
        assert check_envelope(r, 200, "PUT")["data"] == {"previous": first, "default": second}
        assert client.post("/predict", json=TEXT).get_json()["data"]["model_version"] == second
        assert registry.pointers() == (second, None)
    finally:
        registry.store.close()


def test_a_worker_started_during_an_outage_serves_the_default_this_host_last_read(make_app, server, state):
    root, first, second, url, key = state
    admin = {"Authorization": f"Bearer {key}"}
    before = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, REGISTRY_POLL_S=POLL_S).test_client()
    assert before.put("/models/default", json={"version": second}, headers=admin).status_code == 200

    server.stop()
    # a Gunicorn worker: its master did the schema, so it starts whatever the store answers
    late = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, REGISTRY_POLL_S=POLL_S, STORE_UPGRADE=False)
    client = late.test_client()
    health = ready(client)
    assert health["status"] == 200 and health["model_version"] == second
    assert health["store"]["ok"] is False and "the state store is unavailable" in health["store"]["error"]
    assert client.post("/predict", json=TEXT).get_json()["data"]["model_version"] == second
    # the keys last read on this host too: an admin's change is refused by the store, not by the guard
    r = client.put("/models/default", json={"version": first}, headers=admin)
    assert check_envelope(r, 503, "PUT")["message"].startswith("The state store is unavailable")
    assert r.headers["Retry-After"] == "1"

    server.start()
    wait_until(lambda: ready(client)["store"]["ok"], what="the late worker to reach the store")
    r = client.post("/models/default/rollback", json={"reason": "back"}, headers=admin)
    assert check_envelope(r, 200, "POST")["data"] == {"previous": second, "default": first}
    assert client.post("/predict", json=TEXT).get_json()["data"]["model_version"] == first


def test_a_worker_that_never_read_the_store_waits_for_it_unready(make_app, server, state, tmp_path):
    root, first, second, url, key = state
    server.stop()
    client = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, REGISTRY_POLL_S=POLL_S,
                      STORE_UPGRADE=False).test_client()
    health = ready(client)
    assert health["status"] == 503 and health["ready"] is False and health["model_version"] is None
    assert "the state store is unavailable" in health["reason"] and health["store"]["ok"] is False
    r = client.post("/predict", json=TEXT)
    assert check_envelope(r, 503, "POST")["message"].startswith("The model is not loaded")
    server.start()
    wait_until(lambda: ready(client)["status"] == 200, what="the default loaded once the store answers")
    assert ready(client) | {"uptime_seconds": 0, "pid": 0} == {
        "status": 200, "ready": True, "model_version": first, "uptime_seconds": 0, "pid": 0,
        "store": {"ok": True, "error": None}, "degraded": False}
