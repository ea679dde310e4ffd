"""Switching, rolling back and shadowing through the app's test client, on SQLite and on PostgreSQL:
admin keys only, verified first, recorded with who and why, and a refusal (a failed verification,
a store that takes no write) changes nothing."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tagifai_api.auth import oidc
from tagifai_api.auth.keys import KeyStore
from tests.helpers import IdentityProvider, check_envelope, copy_version, store_errors, wait_until

TEXTS = ["YOLO object detection", "a project about things", "BERT for question answering", "an idea"]


@pytest.fixture
def setup(make_app, registry_state, keys):
    root, first, second, url = registry_state
    app = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, REGISTRY_POLL_S=0)
    return app, app.test_client(), root, first, second


def admin(keys) -> dict:
    return {"Authorization": f"Bearer {keys['admin']}"}


WRITES = [("put", "/models/default", True), ("post", "/models/default/rollback", False),
          ("put", "/models/shadow", True), ("delete", "/models/shadow", False)]


@pytest.mark.parametrize("method, path, with_body", WRITES)
def test_writes_need_an_admin_key(setup, keys, registry, method, path, with_body):
    app, client, root, first, second = setup
    kwargs = {"json": {"version": second}} if with_body else {}
    anonymous = getattr(client, method)(path, **kwargs)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    reader = getattr(client, method)(path, headers={"X-API-Key": keys["predict"]}, **kwargs)
    assert reader.status_code == 403 and "admin role" in reader.get_json()["message"]
    assert registry.pointers() == (first, None) and registry.history() == []


@pytest.mark.parametrize("method, path, with_body", WRITES)
def test_writes_are_closed_when_no_admin_key_exists(make_app, registry_state, registry, method, path, with_body):
    root, first, second, url = registry_state
    reader = KeyStore(registry.store).create("reader", "predict")
    client = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url).test_client()
    kwargs = {"json": {"version": second}} if with_body else {}
    anonymous = getattr(client, method)(path, **kwargs)  # 401 before 403, even on a fresh install
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert "none exists yet" in anonymous.get_json()["message"]
    body = getattr(client, method)(path, headers={"Authorization": f"Bearer {reader}"}, **kwargs).get_json()
    assert body["status-code"] == 403 and "No admin API key exists yet" in body["message"]
    assert registry.pointers() == (first, None) and registry.history() == []


def test_switch_then_roll_back(setup, keys, registry):
    app, client, root, first, second = setup
    r = client.put("/models/default", json={"version": second}, headers=admin(keys)).get_json()
    assert r["status-code"] == 200 and r["data"] == {"previous": first, "default": second}
    # this worker serves it at once (the others within TAGIFAI_REGISTRY_POLL_S)
    assert client.post("/predict", json={"texts": [{"text": TEXTS[0]}]}).get_json()["data"]["model_version"] == second
    listed = client.get("/models").get_json()["data"]
    assert listed["default"] == second and listed["history"] == [first]
    assert registry.default_version() == second
    back = client.post("/models/default/rollback", headers=admin(keys)).get_json()
    assert back["status-code"] == 200 and back["data"] == {"previous": second, "default": first}
    assert client.get("/models/default").get_json()["data"]["version"] == first
    again = client.post("/models/default/rollback", headers=admin(keys)).get_json()
    assert again["status-code"] == 409 and "history is empty" in again["message"]
    assert registry.default_version() == first



def test_history_is_newest_first_and_rollbacks_walk_it_back_in_order(setup, keys, registry):
    app, client, root, first, second = setup
    third = copy_version(root, second, "v29990101T000000000000Z")
    fourth = copy_version(root, second, "v29990102T000000000000Z")
    for previous, version in ((first, second), (second, third), (third, fourth)):
        r = client.put("/models/default", json={"version": version}, headers=admin(keys)).get_json()
        assert r["status-code"] == 200 and r["data"] == {"previous": previous, "default": version}
    listed = client.get("/models").get_json()["data"]
    assert listed["default"] == fourth and listed["history"] == [third, second, first]
    for current, back, left in ((fourth, third, [second, first]), (third, second, [first]), (second, first, [])):
        r = client.post("/models/default/rollback", headers=admin(keys)).get_json()
        assert r["status-code"] == 200 and r["data"] == {"previous": current, "default": back}
        listed = client.get("/models").get_json()["data"]
        assert listed["default"] == back and listed["history"] == left
        served = client.post("/predict", json={"texts": [{"text": TEXTS[0]}]}).get_json()["data"]
        assert served["model_version"] == back
    again = client.post("/models/default/rollback", headers=admin(keys)).get_json()
    assert again["status-code"] == 409 and registry.default_version() == first

def test_a_version_failing_verification_is_409_and_nothing_changes(setup, keys, registry):
    app, client, root, first, second = setup
    (root / second / "model.joblib").write_bytes(b"tampered")
    generation = registry.store.generation()
    for path in ("/models/default", "/models/shadow"):
        body = client.put(path, json={"version": second}, headers=admin(keys)).get_json()
        assert body["status-code"] == 409, body
        assert "model.joblib does not match its sha256" in body["data"]["reason"]
    assert registry.pointers() == (first, None) and registry.history() == []
    assert registry.store.generation() == generation and registry.store.audit(1)[0]["action"] == "create_key"
    assert client.post("/predict", json={"texts": [{"text": TEXTS[0]}]}).get_json()["data"]["model_version"] == first


def test_a_failing_warm_up_is_409(setup, keys, registry, monkeypatch):
    app, client, root, first, second = setup

    def broken(self, texts):
        raise MemoryError("no room")

    monkeypatch.setattr("tagifai_api.ml.predict.Predictor.predict", broken)
    body = client.put("/models/default", json={"version": second}, headers=admin(keys)).get_json()
    assert body["status-code"] == 409 and "warm-up prediction failed" in body["data"]["reason"]
    assert registry.pointers() == (first, None) and registry.history() == []


@pytest.mark.parametrize("body, status", [({"version": "nope"}, 404), ({"version": ""}, 422), ({}, 422),
                                          ({"version": 3}, 422), ({"version": "x", "more": 1}, 422)])
def test_bad_requests_change_nothing(setup, keys, registry, body, status):
    app, client, root, first, second = setup
    for path in ("/models/default", "/models/shadow"):
        answer = client.put(path, json=body, headers=admin(keys)).get_json()
        assert answer["status-code"] == status, answer
        if status == 404:
            assert answer["data"]["valid"] == [second, first]
    not_json = client.put("/models/default", data="v1", headers={**admin(keys), "Content-Type": "text/plain"})
    assert not_json.status_code == 415
    assert registry.pointers() == (first, None) and registry.history() == []


def test_a_pinned_service_refuses_to_switch(make_app, registry_state, keys, registry):
    root, first, second, url = registry_state
    client = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, MODEL_VERSION=second).test_client()
    body = client.put("/models/default", json={"version": first}, headers=admin(keys)).get_json()
    assert body["status-code"] == 409 and "pinned" in body["message"]
    assert client.get("/models").get_json()["data"]["default"] == second
    assert registry.pointers() == (first, None)


@contextmanager
def refusing_writes(url: str) -> Iterator[None]:
    """The store takes no write inside the block, as really happens: on SQLite another process holds
    the write lock past the busy timeout; on PostgreSQL the database turns read-only (as a standby does
    after a failover) and the connections opened before are dropped."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        other = sqlite3.connect(parsed.database, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    maintenance = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def read_only(setting: str) -> None:
        with maintenance.connect() as conn:
            conn.exec_driver_sql(f"ALTER DATABASE {parsed.database} {setting}")
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                                 (parsed.database,))

    read_only("SET default_transaction_read_only = on")
    try:
        yield
    finally:
        read_only("RESET default_transaction_read_only")
        maintenance.dispose()


def test_a_store_that_takes_no_write_is_503_with_retry_after_and_nothing_changes(make_app, registry_state, keys,
                                                                                  registry, monkeypatch):
    root, first, second, url = registry_state
    monkeypatch.setattr("tagifai_api.store.database._BUSY_TIMEOUT_S", 1)  # how long a write waits for the lock
    app = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, REGISTRY_POLL_S=0)
    client = app.test_client()
    registry.set_shadow(second)  # something for DELETE /models/shadow to remove
    app.extensions["tagifai"].service.refresh()
    generation, audit = registry.store.generation(), registry.store.audit()
    writes = [("put", "/models/default", {"json": {"version": second, "reason": "better"}}, "set_default"),
              ("post", "/models/default/rollback", {"json": {"reason": "regression"}}, "rollback"),
              ("put", "/models/shadow", {"json": {"version": second}}, "set_shadow"),
              ("delete", "/models/shadow", {}, "clear_shadow")]
    with refusing_writes(url):
        for method, path, kwargs, _ in writes:
            r = getattr(client, method)(path, headers=admin(keys), **kwargs)
            body = check_envelope(r, 503, method.upper())
            assert r.headers["Retry-After"] == "1"
            assert body["message"] == "The state store is unavailable, so nothing changed; retry shortly."
            assert "the state store is unavailable" in body["data"]["reason"]
        # requests are answered all along, from what the worker read
        served = client.post("/predict", json={"texts": [{"text": TEXTS[0]}]})
        assert check_envelope(served, 200, "POST")["data"]["model_version"] == first
    # the prediction log's writer deletes old rows in the background, and may meet the refusal too
    assert {k: v for k, v in store_errors(client).items() if k != "purge"} == {op: 1.0 for *_, op in writes}
    assert registry.pointers() == (first, second) and registry.history() == []
    assert registry.store.generation() == generation and registry.store.audit() == audit
    # a passing failure: the same changes go through once the store takes writes again
    assert client.delete("/models/shadow", headers=admin(keys)).get_json()["data"] == {"previous": second,
                                                                                      "shadow": None}
    r = client.put("/models/default", json={"version": second, "reason": "better"}, headers=admin(keys))
    assert check_envelope(r, 200, "PUT")["data"] == {"previous": first, "default": second}
    assert registry.pointers() == (second, None) and registry.history()[-1]["version"] == first


def test_shadow_is_scored_and_its_agreement_shown(setup, keys):
    app, client, root, first, second = setup
    assert client.put("/models/shadow", json={"version": first}, headers=admin(keys)).status_code == 409  # the default
    r = client.put("/models/shadow", json={"version": second}, headers=admin(keys)).get_json()
    assert r["status-code"] == 200 and r["data"] == {"previous": None, "shadow": second}
    for text in TEXTS:
        assert client.post("/predict", json={"texts": [{"text": text}]}).status_code == 200
    service = app.extensions["tagifai"].service
    deadline = time.monotonic() + 5
    while service.shadow.scored < len(TEXTS) and time.monotonic() < deadline:
        time.sleep(0.01)
    data = client.get("/models").get_json()["data"]
    assert data["shadow"] == second
    agreement = data["shadow_agreement"]
    assert agreement["scored"] == len(TEXTS) == agreement["agree"] + agreement["disagree"]
    assert agreement["disagree"] > 0 and agreement["rate"] == round(agreement["agree"] / len(TEXTS), 4)
    assert [m["shadow"] for m in data["models"]] == [True, False]
    assert client.get("/models/shadow").get_json()["data"] == {"shadow": second, "shadow_agreement": agreement}
    cleared = client.delete("/models/shadow", headers=admin(keys)).get_json()
    assert cleared["data"] == {"previous": second, "shadow": None}
    assert client.delete("/models/shadow", headers=admin(keys)).get_json()["data"]["previous"] is None
    assert client.get("/models").get_json()["data"]["shadow_agreement"] is None
    assert client.get("/models/shadow").get_json()["data"] == {"shadow": None, "shadow_agreement": None}



def test_shadow_counter_is_labelled_with_the_served_version_and_the_shadow(setup, keys):
    app, client, root, first, second = setup
    third = copy_version(root, first, "v29990101T000000000000Z")
    assert client.put("/models/shadow", json={"version": second}, headers=admin(keys)).status_code == 200
    for text in TEXTS:
        assert client.post("/predict", json={"texts": [{"text": text}]}).status_code == 200
    asked = client.post(f"/predict?version={third}", json={"texts": [{"text": t} for t in TEXTS]}).get_json()
    assert asked["data"]["model_version"] == third
    wait_until(lambda: client.get("/models").get_json()["data"]["shadow_agreement"]["scored"] == 2 * len(TEXTS),
               what="every text scored by the shadow")
    agreement = client.get("/models").get_json()["data"]["shadow_agreement"]
    assert agreement["agree"] > 0 and agreement["disagree"] > 0
    families = text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
    samples = {tuple(sorted(s.labels.items())): s.value
               for family in families for s in family.samples if s.name == "tagifai_shadow_predictions_total"}
    # the third version has the first's files, so each of the two served versions saw the same split
    expected = {}
    for served in (first, third):
        for outcome in ("agree", "disagree"):
            labels = (("model_version", served), ("outcome", outcome), ("shadow_version", second))
            expected[labels] = agreement[outcome] / 2
    assert samples == expected

def test_mode_off_is_an_explicit_choice_that_opens_the_writes(make_app, registry_state, registry):
    root, first, second, url = registry_state
    client = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, AUTH="off").test_client()
    assert client.put("/models/default", json={"version": second}).get_json()["data"]["default"] == second
    assert registry.store.audit(1)[0]["key_name"] is None  # no key was asked for, so none is recorded


def changes(rows: list[dict]) -> list[tuple]:
    return [(c["action"], c["from"], c["to"], c["key_name"], c["reason"]) for c in rows]


def test_every_change_is_recorded_with_its_key_and_reason_newest_first(setup, keys, registry):
    app, client, root, first, second = setup
    headers = admin(keys)
    steps = [("put", "/models/default", {"json": {"version": second, "reason": "better F1"}}),
             ("put", "/models/shadow", {"json": {"version": first, "reason": "compare"}}),
             ("delete", "/models/shadow", {}),
             ("post", "/models/default/rollback", {"json": {"reason": "a regression"}}),
             ("put", "/models/default", {"json": {"version": second}}),
             ("post", "/models/default/rollback", {})]  # a rollback's body is optional
    for method, path, kwargs in steps:
        r = getattr(client, method)(path, headers=headers, **kwargs)
        assert r.status_code == 200, r.get_json()
    body = check_envelope(client.get("/models/history", headers=headers), 200)
    recorded = body["data"]["changes"]
    assert changes(recorded) == [
        ("rollback", second, first, "ops", None),
        ("set_default", first, second, "ops", None),
        ("rollback", second, first, "ops", "a regression"),
        ("clear_shadow", first, None, "ops", None),
        ("set_shadow", None, first, "ops", "compare"),
        ("set_default", first, second, "ops", "better F1"),
        ("create_key", None, "reader (predict)", None, None),
        ("create_key", None, "ops (admin)", None, None),
        ("set_default", None, first, None, "trained"),
    ]
    times = [datetime.fromisoformat(c["at"]) for c in recorded]
    assert times == sorted(times, reverse=True) and all(t.utcoffset().total_seconds() == 0 for t in times)
    assert recorded == registry.store.audit()  # what the store holds, in the same order


def test_a_tokens_subject_is_recorded_for_every_change(make_app, registry_state, registry):
    """An identity-provider token's subject stands where a key's name would, in both stores; one
    longer than the column is recorded as a prefix and a digest (PostgreSQL would refuse it whole)."""
    root, first, second, url = registry_state
    provider = IdentityProvider()
    try:
        client = make_app(ARTIFACTS_DIR=str(root), DATABASE_URL=url, REGISTRY_POLL_S=0,
                          **provider.settings()).test_client()
        short, long = "9d0c6e7a-ops", "https://idp.example.com/users/" + "x" * 200
        for subject, method, path, kwargs in [
                (short, "put", "/models/default", {"json": {"version": second, "reason": "better"}}),
                (long, "put", "/models/shadow", {"json": {"version": first}}),
                (short, "delete", "/models/shadow", {}),
                (long, "post", "/models/default/rollback", {})]:
            token = provider.token(sub=subject, roles=["tagifai:admin"])
            r = getattr(client, method)(path, headers={"Authorization": f"Bearer {token}"}, **kwargs)
            assert r.status_code == 200, r.get_json()
    finally:
        provider.stop()
    clipped = oidc.recorded_name(long)
    assert len(clipped) == 64 and clipped.startswith(long[:51])
    assert changes(registry.store.audit(4)) == [("rollback", second, first, clipped, None),
                                                ("clear_shadow", first, None, short, None),
                                                ("set_shadow", None, first, clipped, None),
                                                ("set_default", first, second, short, "better")]


def test_the_history_is_for_admin_keys_only_and_its_limit_is_bounded(setup, keys):
    app, client, root, first, second = setup
    assert client.get("/models/history").status_code == 401
    reader = client.get("/models/history", headers={"X-API-Key": keys["predict"]})
    assert reader.status_code == 403 and "admin role" in reader.get_json()["message"]
    everything = client.get("/models/history?limit=1000", headers=admin(keys)).get_json()["data"]["changes"]
    assert [c["action"] for c in everything] == ["create_key", "create_key", "set_default"]
    newest = client.get("/models/history?limit=1", headers=admin(keys)).get_json()["data"]["changes"]
    assert newest == everything[:1]
    for limit in ("0", "1001", "-1", "x", "1.5", ""):
        body = check_envelope(client.get(f"/models/history?limit={limit}", headers=admin(keys)), 422)
        assert "limit" in body["data"]["errors"], limit


@pytest.mark.parametrize("kwargs, status", [
    ({"json": {"reason": 3}}, 422),
    ({"json": {"reason": "x" * 501}}, 422),
    ({"json": {"why": "no field of that name"}}, 422),
    ({"json": ["a regression"]}, 422),
    ({"data": "{not json", "content_type": "application/json"}, 400),
    ({"data": "a regression", "content_type": "text/plain"}, 415),
])
def test_a_rollback_with_a_bad_body_changes_nothing(setup, keys, registry, kwargs, status):
    app, client, root, first, second = setup
    registry.set_default(second)
    audit = registry.store.audit()
    r = client.post("/models/default/rollback", headers=admin(keys), **kwargs)
    check_envelope(r, status, "POST")
    assert registry.pointers() == (second, None) and [e["version"] for e in registry.history()] == [first]
    assert registry.store.audit() == audit
