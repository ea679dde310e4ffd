"""The Postman collection, run by newman (from package-lock.json) against a live Gunicorn."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tagifai_api.auth.keys import KeyStore
from tagifai_api.store.database import Store
from tagifai_api.store.jobs import Jobs
from tests import helpers

POSTMAN = helpers.ROOT / "clients" / "postman"
COLLECTION = POSTMAN / "tagifai_api.postman_collection.json"
ENVIRONMENT = POSTMAN / "local.postman_environment.json"
NEWMAN = helpers.ROOT / "node_modules" / ".bin" / "newman"

pytestmark = pytest.mark.integration


def requests_in(items: list[dict]) -> list[dict]:
    out = []
    for item in items:
        out.extend(requests_in(item["item"]) if "item" in item else [item])
    return out


def test_lockfile_fetches_only_from_the_registry():
    lock = json.loads((helpers.ROOT / "package-lock.json").read_text())
    declared = json.loads((helpers.ROOT / "package.json").read_text())["devDependencies"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", declared["newman"]), "newman is pinned to an exact version"
    assert lock["packages"]["node_modules/newman"]["version"] == declared["newman"]
    for name, package in lock["packages"].items():
        resolved = package.get("resolved")
        assert resolved is None or resolved.startswith("https://registry.npmjs.org/"), (name, resolved)
        assert name == "" or package.get("integrity"), f"{name} has no integrity hash"


def test_collection_covers_every_route_and_the_main_errors(app):
    items = requests_in(json.loads(COLLECTION.read_text())["item"])
    seen = {(i["request"]["method"], "/" + "/".join(i["request"]["url"]["path"])) for i in items}
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        if rule.endpoint in {"static", "docs.static"}:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert any(m == method and adapter.test(p, method=m) and adapter.match(p, method=m)[0] == rule.endpoint
                       for m, p in seen), f"no request for {method} {rule.rule}"
    statuses = {int(code) for i in items for event in i["event"] for line in event["script"]["exec"]
                for code in re.findall(r"to\.have\.status\((\d+)\)", line)}
    assert {200, 400, 401, 404, 405, 415, 422} <= statuses
    env = json.loads(ENVIRONMENT.read_text())
    assert [v["key"] for v in env["values"]] == ["baseUrl", "apiKey", "adminKey"]
    assert env["values"][1]["value"] == env["values"][2]["value"] == ""  # a key is never committed


def test_newman_runs_the_collection_clean(registry_root, tmp_path):
    helpers.require_binary("node", "nodejs")
    if not NEWMAN.exists():
        npm = helpers.require_binary("npm")
        install = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=helpers.ROOT,
                                 capture_output=True, text=True, timeout=300)
        assert install.returncode == 0, install.stderr[-4000:]
    report = tmp_path / "newman.json"
    # every route behind a key, so the collection's key handling is exercised too
    root, first, second = registry_root  # two versions, so the registry's requests switch for real
    store = Store(helpers.state_url(root))
    key = KeyStore(store).create("newman", "predict")
    admin_key = KeyStore(store).create("newman-admin", "admin")
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_RETRAIN_NICE": "0"}  # its retraining need not wait behind others' work
    earlier = len(store.audit(limit=1000))
    with helpers.gunicorn(root, workers=1, env=env) as api:
        run = subprocess.run(
            [str(NEWMAN), "run", str(COLLECTION), "-e", str(ENVIRONMENT), "--env-var", f"baseUrl={api.url}",
             "--env-var", f"apiKey={key}", "--env-var", f"adminKey={admin_key}",
             "--reporters", "cli,json", "--reporter-json-export", str(report), "--color", "off",
             "--timeout-request", "10000", "--bail"],
            cwd=helpers.ROOT, capture_output=True, text=True, timeout=120,
        )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    result = json.loads(report.read_text())["run"]
    stats = result["stats"]
    assert stats["requests"]["failed"] == 0 and stats["assertions"]["failed"] == 0
    assert stats["assertions"]["total"] >= 50
    ran = {e["item"]["name"] for e in result["executions"] if e.get("response")}
    assert {"No key (401)", "Unknown key (401)", "With the key (X-API-Key)"} <= ran
    assert {"Switch the default (admin)", "Roll back (admin)", "Shadow a candidate (admin)", "Stop shadowing (admin)",
            "Switch with a predict key (403)", "Switch without a key (401)", "Audit log (admin)", "Retrain (admin)",
            "Job (admin)", "Retraining jobs (admin)", "Promote the shadow, none (409)",
            "Retrain with a predict key (403)"} <= ran
    # the retraining it started ends on its own (no feedback: the gate keeps the candidate)
    (job,) = Jobs(store).recent("retrain")
    helpers.wait_until(lambda: Jobs(store).get(job["id"])["state"] in ("succeeded", "failed"), timeout_s=120,
                       what="the collection's retraining ended")
    assert Jobs(store).get(job["id"])["result"]["decision"] == "kept"
    # the collection undoes its own changes, each one made with the admin key
    assert store.pointers() == (first, None)
    audit = store.audit(limit=1000)
    changes = audit[:len(audit) - earlier]
    assert {c["action"] for c in changes} == {"set_default", "rollback", "set_shadow", "clear_shadow", "trained",
                                              "kept"}
    assert {c["key_name"] for c in changes} == {"newman-admin"}
    store.close()
