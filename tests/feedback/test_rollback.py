"""The automatic rollback: a promoted default that live feedback shows worse than the version it replaced
(95 % confidence, once each has enough corrections) is rolled back by itself, once, and said why."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tagifai_api.feedback import rollback
from tagifai_api.feedback.service import FeedbackService
from tests.helpers import add_key, check_envelope

OTHER_TAG = {"computer-vision": "mlops", "mlops": "other", "natural-language-processing": "computer-vision",
             "other": "natural-language-processing"}


@pytest.fixture
def promoted(make_app, registry_root, dataset):
    """An app on the two-version folder in which ``second`` was promoted over ``first``, and a helper
    ``correct(version, right, wrong)`` that predicts with ``version`` and sends feedback: ``right``
    answers confirmed, then ``wrong`` ones corrected, through POST /feedback."""
    root, first, second = registry_root

    def build(**config):
        app = make_app(ARTIFACTS_DIR=str(root), REGISTRY_POLL_S=0, **config)
        client = app.test_client()
        key = {"Authorization": f"Bearer {add_key(app, 'tagger', 'predict')}"}
        service = app.extensions["tagifai"].service
        texts = iter(f"{t} {d}" for t, d in zip(dataset["title"], dataset["description"], strict=True))

        def correct(version: str, right: int, wrong: int) -> list[dict]:
            items = []
            for n, keep in ((right, True), (wrong, False)):
                for i in range(n):
                    rid = f"{version}-{keep}-{i}-{len(items)}"
                    r = client.post(f"/predict?version={version}", json={"texts": [{"text": next(texts)}]},
                                    headers={"X-Request-ID": rid})
                    tag = r.get_json()["data"]["predictions"][0]["predicted_tag"]
                    items.append({"request_id": rid, "tag": tag if keep else OTHER_TAG[tag]})
            service.prediction_log.flush()
            answers = []
            for i in range(0, len(items), 100):
                answers.append(check_envelope(client.post("/feedback", json={"feedback": items[i:i + 100]},
                                                          headers=key), 200, "POST"))
            return answers

        service.promote(second, first, "ops", "gate passed: a test")
        return app, client, service, correct

    return build, first, second


def _rollbacks(client) -> float:
    families = text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
    return sum(s.value for f in families for s in f.samples if s.name == "tagifai_auto_rollbacks_total")


def test_a_promoted_default_worse_than_the_previous_one_rolls_back_by_itself_once(promoted):
    build, first, second = promoted
    app, client, service, correct = build()
    store = service.registry.store
    assert _rollbacks(client) == 0
    correct(first, right=110, wrong=10)  # the old version: 92 % right
    assert service.default.version == second
    correct(second, right=50, wrong=50)  # the new one: 50 % right; the check runs after each request
    assert store.pointers() == (first, None) and service.default.version == first
    entry = store.audit(1)[0]
    assert (entry["action"], entry["from"], entry["to"], entry["key_name"]) == ("auto_rollback", second, first, None)
    assert entry["reason"].startswith(f"live accuracy {second} 0.500 [0.404, 0.596] on 100 corrections against "
                                      f"{first} 0.917 [0.853, 0.954] on 120 corrections: worse with 95 % confidence")
    assert _rollbacks(client) == 1
    correct(second, right=0, wrong=30)  # more bad news: rolled back already, nothing more to do
    assert [e["action"] for e in store.audit(10)].count("auto_rollback") == 1 and _rollbacks(client) == 1


def test_feedback_favouring_the_new_default_or_too_little_of_it_changes_nothing(promoted):
    build, first, second = promoted
    app, client, service, correct = build()
    correct(first, right=60, wrong=60)
    correct(second, right=99, wrong=0)  # far worse would be needed, and 99 is not enough anyway
    correct(second, right=60, wrong=10)
    assert service.registry.pointers()[0] == second and _rollbacks(client) == 0


def test_off_it_never_rolls_back(promoted):
    build, first, second = promoted
    app, client, service, correct = build(AUTO_ROLLBACK=False)
    correct(first, right=110, wrong=10)
    correct(second, right=20, wrong=100)
    assert service.registry.pointers()[0] == second and _rollbacks(client) == 0


def test_only_a_promotion_is_watched_not_an_operators_own_switch(promoted):
    build, first, second = promoted
    app, client, service, correct = build()
    service.set_default(first, "ops", "back by hand")
    service.set_default(second, "ops", "forward by hand")
    correct(first, right=110, wrong=10)
    correct(second, right=20, wrong=100)
    assert service.registry.pointers()[0] == second


def test_workers_deciding_at_once_roll_back_once(promoted, make_app, registry_root):
    build, first, second = promoted
    app, client, service, correct = build(AUTO_ROLLBACK=False)
    correct(first, right=110, wrong=10)
    correct(second, right=20, wrong=100)
    others = [make_app(ARTIFACTS_DIR=str(registry_root[0]), REGISTRY_POLL_S=0).extensions["tagifai"].service
              for _ in range(3)]
    barrier = threading.Barrier(len(others))
    results = []

    def check(worker):
        barrier.wait()
        results.append(FeedbackService(worker.registry.store).watch_default(worker, 100))

    threads = [threading.Thread(target=check, args=(w,)) for w in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r is not None for r in results) == [False, False, True]
    assert [e["action"] for e in service.registry.store.audit(5)].count("auto_rollback") == 1


def test_the_two_proportion_test_against_a_hand_computation():
    # 50/100 against 110/120: pooled p = 160/220, se = sqrt(p (1 - p) (1/100 + 1/120)) = 0.06030
    is_worse, z = rollback.worse((100, 50), (120, 110))
    assert is_worse and z == pytest.approx((0.5 - 110 / 120) / 0.060302, abs=1e-3)
    # 85/100 against 90/100: pooled 0.875, se = sqrt(0.875 * 0.125 * 0.02) = 0.046771, z = -0.05 / se
    assert rollback.worse((100, 85), (100, 90)) == (False, pytest.approx(-1.0690, abs=1e-3))  # not significant
    assert rollback.worse((100, 100), (100, 100)) == (False, 0.0)
