"""API keys through the test client: every mode x role x missing/unknown/low key, both headers."""

from __future__ import annotations

import json
import logging
import re

import pytest
from flask import Blueprint

from tagifai_api.auth import guard
from tagifai_api.auth.guard import public, require_role
from tagifai_api.auth.keys import KeyStore
from tagifai_api.store.database import Store
from tagifai_api.store.legacy import LegacyFileError
from tagifai_api.web import access
from tagifai_api.web.responses import construct_response
from tests.helpers import ENVELOPE, state_url, store_outage

PREDICT_BODY = {"texts": [{"text": "Transformers for text classification."}]}
UNKNOWN = "tagifai_" + "A" * 43

# a tiny blueprint standing in for the routes that change what is served
admin_bp = Blueprint("admin_test", __name__)


@admin_bp.put("/test/admin")
@require_role("admin")
def admin_route():
    return construct_response(200, data={"changed": True})


@admin_bp.get("/test/page")
@public
def page_route():
    return construct_response(200)


@pytest.fixture
def keyset(app_store) -> dict[str, str]:
    """A predict and an admin key in the store of the test's apps, made before any app."""
    store = KeyStore(app_store)
    return {"predict": store.create("reader", "predict"), "admin": store.create("ops", "admin")}


@pytest.fixture
def auth_app(make_app):
    def factory(mode: str):
        app = make_app(AUTH=mode, METRICS=False)
        app.register_blueprint(admin_bp)
        return app

    return factory


def call(client, route: str, headers: dict):
    if route == "predict":
        return client.post("/predict", json=PREDICT_BODY, headers=headers)
    if route == "admin":
        return client.put("/test/admin", headers=headers)
    return client.get(route, headers=headers)


def credentials(keyset: dict, who: str, header: str) -> dict:
    key = {"none": None, "unknown": UNKNOWN, "predict": keyset["predict"], "admin": keyset["admin"]}[who]
    if key is None:
        return {}
    return {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}


OPEN = ["/", "/health/live", "/health/ready", "/docs", "/openapi.json", "/test/page"]
READ = ["/args", "/args/threshold", "/performance", "predict"]
WHO = ["none", "unknown", "predict", "admin"]

# expected status per (mode, route kind, who)
EXPECTED = {
    "off": {"open": [200] * 4, "read": [200] * 4, "admin": [200] * 4},
    "admin": {"open": [200] * 4, "read": [200] * 4, "admin": [401, 401, 403, 200]},
    "all": {"open": [200] * 4, "read": [401, 401, 200, 200], "admin": [401, 401, 403, 200]},
}


def cases():
    for mode, kinds in EXPECTED.items():
        for kind, statuses in kinds.items():
            routes = {"open": OPEN, "read": READ, "admin": ["admin"]}[kind]
            for route in routes:
                for who, status in zip(WHO, statuses, strict=True):
                    for header in ("bearer", "x-api-key"):
                        if who == "none" and header == "x-api-key":
                            continue
                        yield mode, route, who, header, status


@pytest.mark.parametrize(("mode", "route", "who", "header", "status"), list(cases()))
def test_mode_role_and_key_decide_the_answer(auth_app, keyset, mode, route, who, header, status):
    client = auth_app(mode).test_client()
    r = call(client, route, credentials(keyset, who, header))
    assert r.status_code == status, r.get_data(as_text=True)
    if route == "/docs":  # the Swagger UI page itself, whatever key came with the request
        assert r.mimetype == "text/html" and 'SwaggerUIBundle({url: "openapi.json"' in r.get_data(as_text=True)
        return
    body = r.get_json()
    if route == "/openapi.json":
        assert body["openapi"].startswith("3.") and "/predict" in body["paths"]
    if route != "/openapi.json":
        assert ENVELOPE <= body.keys() and body["status-code"] == status
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert ("invalid_token" in r.headers["WWW-Authenticate"]) == (who == "unknown")
        assert "Authorization: Bearer" in body["message"] or "not valid" in body["message"]
    else:
        assert "WWW-Authenticate" not in r.headers
    if status == 403:
        assert body["message"] == ("This route needs a key with the admin role; the key 'reader' has the "
                                   "predict role.")


@pytest.mark.parametrize("mode", ["admin", "all"])
def test_admin_routes_are_closed_while_no_admin_key_exists(auth_app, app_store, mode):
    """401 before 403: no credentials is 401 with WWW-Authenticate whether or not an admin key exists
    (the message says none does, and how to make one); a valid key whose role is too low is 403."""
    reader = KeyStore(app_store).create("reader", "predict")
    client = auth_app(mode).test_client()
    r = client.put("/test/admin", headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 403 and "WWW-Authenticate" not in r.headers
    assert r.get_json()["message"] == (
        "This route needs a key with the admin role; the key 'reader' has the predict role. No admin API key "
        "exists yet: create one with `python -m tagifai_api keys create --name NAME --role admin`.")
    r = client.put("/test/admin")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="tagifai"'
    assert "none exists yet" in r.get_json()["message"] and "keys create" in r.get_json()["message"]
    r = client.put("/test/admin", headers={"X-API-Key": UNKNOWN})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_admin_routes_answer_401_with_no_key_in_the_store_at_all(auth_app, app_store):
    """A fresh install: nothing in the store, and a request with no credentials is a 401 (what HTTP
    says for missing credentials), never a 403."""
    assert app_store.keys() == []
    r = auth_app("admin").test_client().put("/test/admin")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.get_json()["message"].startswith("This route needs an admin API key, and none exists yet")


def test_off_leaves_even_admin_routes_open_and_says_so(auth_app, caplog):
    assert auth_app("off").test_client().put("/test/admin").status_code == 200
    assert any("TAGIFAI_AUTH=off" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_unknown_route_needs_a_key_in_mode_all(auth_app, keyset):
    client = auth_app("all").test_client()
    assert client.get("/nope").status_code == 401
    assert client.get("/nope", headers={"X-API-Key": keyset["predict"]}).status_code == 404


@pytest.mark.parametrize("header", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(auth_app, keyset, header):
    r = auth_app("all").test_client().get("/args", headers={"Authorization": f"{header} {keyset['predict']}"})
    assert r.status_code == 200


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "tagifai_x"])
def test_other_authorization_values_are_no_key(auth_app, value):
    r = auth_app("all").test_client().get("/args", headers={"Authorization": value})
    assert r.status_code == 401 and "invalid_token" not in r.headers["WWW-Authenticate"]


WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def write_routes(app) -> list[tuple[str, str, str]]:
    """(path, method, endpoint) of every route that may change what is served: each write method of each
    rule but POST /predict (which only reads the model) and POST /feedback (which any key may send: see
    the test below), with a sample value in any variable part."""
    out = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<[^<>]+>", "x", rule.rule)
        for method in sorted(rule.methods & WRITE_METHODS):
            if (path, method) not in {("/predict", "POST"), ("/feedback", "POST")}:
                out.append((path, method, rule.endpoint))
    return out


@pytest.mark.parametrize("mode", ["admin", "all"])
def test_feedback_needs_a_key_of_any_role_in_every_mode_but_off(auth_app, keyset, mode):
    app = auth_app(mode)
    assert guard.needed_role(app, "feedback.post_feedback", mode) == "predict"
    assert guard.needed_role(app, "feedback.post_feedback", "off") is None
    client = app.test_client()
    body = {"feedback": [{"text": "A text.", "tag": "mlops"}]}
    assert client.post("/feedback", json=body).status_code == 401
    for who in ("predict", "admin"):
        assert client.post("/feedback", json=body, headers=credentials(keyset, who, "bearer")).status_code == 200


@pytest.mark.parametrize("mode", ["admin", "all"])
def test_every_route_that_changes_state_needs_an_admin_key_in_every_spelling(auth_app, keyset, mode):
    app = auth_app(mode)
    routes = write_routes(app)
    assert ("/test/admin", "PUT", "admin_test.admin_route") in routes  # the check sees blueprints' routes
    client = app.test_client()
    for path, method, endpoint in routes:
        assert guard.needed_role(app, endpoint, mode) == "admin", (method, path)
        escaped = re.sub(r"([a-z])", lambda m: f"%{ord(m[1]):02x}", path, count=1)
        spellings = {path, path + "/", path.replace("/", "//"), escaped}
        for who, status in (("none", 401), ("predict", 403)):
            headers = credentials(keyset, who, "bearer")
            r = client.open(path, method=method, headers=headers, json={"version": "x"})
            assert r.status_code == status and r.get_json()["status-code"] == status, (method, path, who)
            for spelling in spellings:
                r = client.open(spelling, method=method, headers=headers, json={"version": "x"})
                assert r.status_code in {status, 404}, (method, spelling, who, r.status_code)
            for override in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"):
                for via in ("GET", "POST"):
                    r = client.open(path, method=via, headers={**headers, override: method}, json={"version": "x"})
                    plain = client.open(path, method=via, headers=headers, json={"version": "x"})
                    if plain.status_code < 400:  # a read of its own at that path (GET /models/default)
                        assert r.status_code == plain.status_code, (via, override, method, path)  # override ignored
                        continue
                    assert not 200 <= r.status_code < 400, (via, override, method, path, r.status_code)


@pytest.mark.parametrize("param", ["api_key", "key", "token", "access_token", "X-API-Key", "Authorization"])
def test_a_key_in_the_url_is_never_accepted(auth_app, keyset, param):
    client = auth_app("all").test_client()
    for query in (f"{param}={keyset['admin']}", f"{param}=Bearer%20{keyset['admin']}"):
        assert client.get(f"/args?{query}").status_code == 401
        assert client.put(f"/test/admin?{query}").status_code == 401


def test_refusals_are_counted_as_errors_by_type(make_app, keyset, monkeypatch):
    app = make_app(AUTH="all", METRICS=False)
    seen = []

    class Recorder:
        def error(self, kind):
            seen.append(kind)

    app.extensions["tagifai"].metrics = Recorder()
    app.test_client().get("/args")
    assert seen == ["UnauthorizedError"]


def test_keys_are_never_logged_and_the_access_line_names_the_key(auth_app, keyset, monkeypatch, capfd):
    lines: list[bytes] = []
    monkeypatch.setattr(access._writer, "write", lines.append)
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(logging.Formatter().format(record))
    logger = logging.getLogger("tagifai_api")
    logger.addHandler(handler)
    try:
        app = auth_app("all")
        app.logger.setLevel(logging.DEBUG)
        logging.getLogger("tagifai_api").setLevel(logging.DEBUG)
        client = app.test_client()
        client.post("/predict", json=PREDICT_BODY, headers={"Authorization": f"Bearer {keyset['predict']}"})
        client.put("/test/admin", headers={"X-API-Key": keyset["admin"]})
        client.put("/test/admin", headers={"X-API-Key": keyset["predict"]})
        client.get("/args", headers={"X-API-Key": UNKNOWN})
    finally:
        logger.removeHandler(handler)
    access_lines = [line.decode() for line in lines]
    everything = "\n".join(access_lines + records) + capfd.readouterr().out
    for secret in (*keyset.values(), UNKNOWN):
        assert secret not in everything
    parsed = [json.loads(line) for line in access_lines]
    assert [(p["status"], p["key_name"]) for p in parsed] == [
        (200, "reader"), (200, "ops"), (403, "reader"), (401, None)]


def test_openapi_marks_exactly_the_routes_that_need_a_key(auth_app):
    def secured(mode):
        spec = auth_app(mode).test_client().get("/openapi.json").get_json()
        assert spec["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http", "scheme": "bearer", "description": spec["components"]["securitySchemes"]
            ["bearerAuth"]["description"]}
        out = set()
        for path, operations in spec["paths"].items():
            for method, op in operations.items():
                if "security" in op:
                    assert op["security"] == [{"bearerAuth": []}]
                    assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Envelope"}
                    out.add((method, path))
                else:
                    assert "401" not in op["responses"]
        return out

    admin_only = {("put", "/models/default"), ("post", "/models/default/rollback"), ("put", "/models/shadow"),
                  ("delete", "/models/shadow"), ("get", "/models/history"),  # the switches, and who made them
                  ("post", "/models/retrain"), ("get", "/models/retrain"), ("get", "/jobs/{job_id}"),
                  ("post", "/models/default/promote-shadow")}
    any_key = {("post", "/feedback")}  # feedback becomes training data: never open
    assert secured("all") == {("get", "/performance"), ("get", "/args"), ("get", "/args/{arg}"),
                              ("post", "/predict"), ("get", "/models"), ("get", "/models/{version}"),
                              ("get", "/models/default"), ("get", "/models/shadow"),
                              ("get", "/models/{version}/quality"), ("get", "/models/{version}/drift")} \
        | admin_only | any_key
    assert secured("admin") == admin_only | any_key
    assert secured("off") == set()


def test_invalid_mode_is_refused(make_app):
    with pytest.raises(ValueError, match="TAGIFAI_AUTH: expected one of admin, all, off, got 'some'"):
        make_app(AUTH="some")


def test_a_broken_old_keys_file_stops_the_app_only_when_it_would_be_imported(make_app, app_store, keyset,
                                                                             tmp_path):
    """The old keys file is imported into an empty store: broken, it stops the start there (no watcher
    left behind); a store in use never reads it, so it cannot stop anything."""
    old = tmp_path / "api_keys.json"
    old.write_text("{ broken")
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(LegacyFileError, match=f"keys file {old} is not valid JSON"):
        make_app(AUTH="all", DATABASE_URL=empty, API_KEYS_FILE=str(old), REGISTRY_POLL_S=0)
    client = make_app(AUTH="all", API_KEYS_FILE=str(old), METRICS=False).test_client()
    assert call(client, "/args", {"Authorization": f"Bearer {keyset['admin']}"}).status_code == 200


@pytest.mark.parametrize("kept", [True, False])
def test_a_worker_started_while_the_store_is_down_serves_the_keys_this_host_last_read(
        make_app, app_store, keyset, kept, caplog):
    """A worker (re)started while the store cannot be read (what gunicorn.conf.py sets for a worker:
    no upgrade, only a check) still starts and stays ready; it serves the keys a worker of this host
    last read, or, with none kept, refuses every key; it follows the store once it answers."""
    make_app(AUTH="all", METRICS=False)  # a worker that read the keys
    if not kept:
        app_store._snapshot_path("keys").unlink()
    with store_outage(app_store.url, stores=(app_store,)):
        with caplog.at_level(logging.ERROR, logger="tagifai_api.auth"):
            app = make_app(AUTH="all", METRICS=False, STORE_UPGRADE=False, REGISTRY_POLL_S=0)
        client = app.test_client()
        admin = call(client, "/args", {"Authorization": f"Bearer {keyset['admin']}"})
        assert admin.status_code == (200 if kept else 401), admin.get_json()
        assert call(client, "/args", {"X-API-Key": UNKNOWN}).status_code == 401
        assert call(client, "/health/ready", {}).status_code == 200
    assert ("starting with the 2 keys this host last read" if kept else "starting with no keys") in caplog.text
    KeyStore(app_store).revoke("ops")
    app.extensions["tagifai_auth"].ring.refresh()  # the watcher's next poll, now
    assert call(client, "/args", {"Authorization": f"Bearer {keyset['admin']}"}).status_code == 401
    assert call(client, "/args", {"Authorization": f"Bearer {keyset['predict']}"}).status_code == 200


def test_key_changes_are_in_the_audit_log_with_the_admin_who_made_them(make_app, registry_root):
    """Keys made or revoked with the command carry no key name (it holds no key); a switch made over
    HTTP carries the admin key's; the log shows names and roles, never a key or a hash."""
    root, first, second = registry_root
    store = Store(state_url(root))
    made = KeyStore(store)
    admin = made.create("ops", "admin")
    reader = made.create("reader", "predict")
    made.revoke("reader")
    client = make_app(ARTIFACTS_DIR=str(root), AUTH="admin", METRICS=False).test_client()
    ops = {"Authorization": f"Bearer {admin}"}
    assert client.put("/models/default", json={"version": second, "reason": "better"}, headers=ops).status_code == 200
    assert client.post("/models/default/rollback", headers=ops).status_code == 200
    assert client.get("/models/history").status_code == 401  # who changed what is for admins only
    r = client.get("/models/history", headers=ops)
    assert r.status_code == 200
    changes = [(c["action"], c["from"], c["to"], c["key_name"], c["reason"]) for c in r.get_json()["data"]["changes"]]
    assert changes[:5] == [
        ("rollback", second, first, "ops", None),
        ("set_default", first, second, "ops", "better"),
        ("revoke_key", "reader (predict)", None, None, None),
        ("create_key", None, "reader (predict)", None, None),
        ("create_key", None, "ops (admin)", None, None),
    ]
    text = r.get_data(as_text=True)
    for secret in (admin, reader, *(k["sha256"] for k in store.keys())):
        assert secret not in text
    store.close()


def test_require_role_refuses_an_unknown_role():
    with pytest.raises(ValueError, match="unknown role 'root'"):
        require_role("root")


def test_metrics_stay_open_in_mode_all(make_app, keyset):
    client = make_app(AUTH="all").test_client()
    r = client.get("/metrics")
    assert r.status_code == 200 and b"# HELP" in r.data


@pytest.mark.parametrize("mode", ["admin", "all"])
def test_every_answer_says_nosniff_and_how_to_cache_it(auth_app, keyset, mode):
    client = auth_app(mode).test_client()
    answers = [client.get("/args"), client.put("/test/admin"), client.get("/nope"),
               client.post("/predict", json=PREDICT_BODY, headers=credentials(keyset, "predict", "bearer")),
               client.get("/health/ready"), client.get("/docs"), client.get("/openapi.json")]
    for r in answers:
        assert r.headers["X-Content-Type-Options"] == "nosniff", r.request.path
        assert r.headers["Cache-Control"] == "no-store", r.request.path
    asset = client.get("/docs/static/swagger-ui.css")
    assert asset.headers["X-Content-Type-Options"] == "nosniff" and "max-age" in asset.headers["Cache-Control"]
    asset.close()  # a file response: close it, as a server does
