"""One retraining from start to decision: the candidate learns from the feedback, is judged on what was
held out and on the fixed test split, carries its lineage, and is promoted, shadowed or kept, each
decision recorded with its numbers."""

from __future__ import annotations

import json

import pytest

from tagifai_api.ml import artifacts, versions
from tagifai_api.retrain import candidate
from tagifai_api.retrain.gate import Gate


def test_a_candidate_better_on_held_out_feedback_is_promoted_with_its_lineage(loop, corrections, send, passing_gate):
    root, parent, registry = loop
    send(registry.store, corrections)
    stages = []
    result = candidate.retrain(registry, root / "small.csv", passing_gate, 0.2, key_name="ops", job_id="job-1",
                               progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert [s for s, _ in stages] == ["reading feedback", "training", "evaluating", "registering", "deciding"]
    version = result["candidate"]
    assert result["decision"] == "promoted" and result["gate"]["passed"]
    assert registry.pointers() == (version, None) and registry.history()[-1]["version"] == parent

    lineage = artifacts.load(root, version).manifest["lineage"]
    assert lineage == result["lineage"] == versions.describe(root, version)["lineage"]
    assert lineage["parent"] == parent and lineage["job"] == "job-1"
    assert lineage["dataset"]["sha256"] == artifacts.sha256_file(root / "small.csv") == \
        artifacts.load(root, version).manifest["dataset_sha256"]
    assert lineage["dataset"]["fitted"] == 255 and lineage["dataset"]["test"] == 45
    feedback = lineage["feedback"]
    assert (feedback["texts"], feedback["used"], feedback["held_out"], feedback["duplicates"]) == (400, 320, 80, 0)
    assert len(feedback["sha256"]) == 64
    held, test = lineage["evaluations"]["held_out"], lineage["evaluations"]["test"]
    assert held["texts"] == 80 and held["candidate"] - held["default"] >= 0.01
    assert test["texts"] == 45 and test["default"] == pytest.approx(
        artifacts.load(root, parent).performance["overall"]["f1"], abs=1e-6)  # the parent's own test split

    promoted, trained = registry.store.audit(2)
    assert (trained["action"], trained["from"], trained["to"], trained["key_name"]) == ("trained", parent, version,
                                                                                         "ops")
    assert "320 feedback texts; 80 held out" in trained["reason"]
    assert (promoted["action"], promoted["from"], promoted["to"]) == ("promoted", parent, version)
    assert promoted["reason"] == result["gate"]["summary"] and f"{held['candidate']:.4f}" in promoted["reason"]


def test_a_candidate_that_fails_the_gate_stays_a_registered_candidate(loop, corrections, send):
    root, parent, registry = loop
    send(registry.store, corrections)
    result = candidate.retrain(registry, root / "small.csv", Gate(margin=0.5), 0.2)
    assert result["decision"] == "kept" and result["gate"]["failed"] == ["margin"]
    assert registry.pointers() == (parent, None)
    assert result["candidate"] in artifacts.list_versions(root)
    kept = registry.store.audit(1)[0]
    assert (kept["action"], kept["from"], kept["to"]) == ("kept", parent, result["candidate"])
    assert kept["reason"].startswith("gate failed: weighted F1 on the held-out feedback")
    assert "+0.5000 needed" in kept["reason"]


def test_too_little_feedback_keeps_the_candidate_whatever_its_scores(loop, corrections, send, passing_gate):
    root, parent, registry = loop
    send(registry.store, corrections[:200])  # 40 held out, fewer than 50
    result = candidate.retrain(registry, root / "small.csv", passing_gate, 0.2)
    assert result["decision"] == "kept" and "min_held_out" in result["gate"]["failed"]
    assert registry.pointers()[0] == parent


def test_with_shadow_a_passing_candidate_becomes_the_shadow(loop, corrections, send, passing_gate):
    root, parent, registry = loop
    send(registry.store, corrections)
    result = candidate.retrain(registry, root / "small.csv", passing_gate, 0.2, shadow=True)
    assert result["decision"] == "shadowed" and registry.pointers() == (parent, result["candidate"])
    assert registry.store.audit(1)[0]["action"] == "shadowed"


def test_feedback_overrides_the_dataset_where_they_disagree_and_never_trains_on_the_held_out(
        loop, by_time, train_args, send, corrections, passing_gate):
    from tagifai_api.ml import train as training

    root, _, registry = loop
    train_df, _, test_df = training.splits(by_time.iloc[:300], train_args)

    def relabelled(row) -> dict:
        return {"text": row["text"], "tag": "other" if row["tag"] != "other" else "computer-vision"}

    replaced, withheld, tested = relabelled(train_df.iloc[0]), relabelled(train_df.iloc[1]), relabelled(test_df.iloc[0])
    duplicate = {**replaced, "text": replaced["text"].upper()}
    # the last one sent is among the newest: held out
    send(registry.store, [replaced, duplicate, tested, *corrections, withheld])
    result = candidate.retrain(registry, root / "small.csv", passing_gate, 0.2)
    feedback, dataset = result["lineage"]["feedback"], result["lineage"]["dataset"]
    assert (feedback["texts"], feedback["duplicates"], feedback["in_test"]) == (403, 1, 1)
    assert (dataset["replaced"], dataset["duplicates"], dataset["withheld"]) == (1, 0, 1)
    assert dataset["fitted"] == 255 - 2 and dataset["test"] == 45  # the test split stays whole


def test_the_default_changing_meanwhile_keeps_the_candidate(loop, corrections, send, passing_gate, monkeypatch):
    root, parent, registry = loop
    send(registry.store, corrections)
    other = artifacts.save(root, _trained_again(root, parent), "x" * 64).version
    real_promote = registry.promote

    def switched_first(version, expect, **kw):
        registry.set_default(other, verifier=lambda _: None)  # another operator, a moment earlier
        return real_promote(version, expect, **kw)

    monkeypatch.setattr(registry, "promote", switched_first)
    result = candidate.retrain(registry, root / "small.csv", passing_gate, 0.2)
    assert result["decision"] == "kept" and result["gate"]["failed"] == ["parent_is_default"]
    assert registry.pointers()[0] == other
    assert json.loads(json.dumps(result))  # the whole result is JSON, as the job stores it


def _trained_again(root, version):
    """A copy of a version's training result, to register as another version."""
    from tagifai_api.ml.train import TrainResult

    model = artifacts.load(root, version)
    return TrainResult(pipeline=artifacts.load_pipeline(model), compiled=model.compiled, args=model.args,
                       labels=model.labels, performance=model.performance)
