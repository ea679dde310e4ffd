"""The registry's state on disk: verification, the default with its history, the shadow, listing."""

from __future__ import annotations

import json
import threading

import pytest

from tagifai_api.ml import artifacts, versions
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.store import registry
from tests.helpers import copy_version


def _damage(root, version, name="model.npz"):
    path = root / version / name
    path.write_bytes(path.read_bytes() + b"\0")


def test_set_default_keeps_the_previous_one_in_the_history(registry_root):
    root, first, second = registry_root
    assert registry.set_default(root, second) == (first, second)
    assert artifacts.default_version(root) == second
    assert [e["version"] for e in registry.history(root)] == [first]
    assert registry.set_default(root, second) == (second, second)  # already the default: nothing recorded
    assert [e["version"] for e in registry.history(root)] == [first]


def test_rollback_walks_back_through_the_history_then_refuses(registry_root):
    root, first, second = registry_root
    third = copy_version(root, second, "v29990101T000000000000Z")
    registry.set_default(root, second)
    registry.set_default(root, third)
    assert registry.rollback(root) == (third, second)
    assert registry.rollback(root) == (second, first)
    assert artifacts.default_version(root) == first
    with pytest.raises(registry.RegistryConflictError, match="history is empty"):
        registry.rollback(root)
    assert artifacts.default_version(root) == first


def test_a_version_failing_verification_changes_nothing(registry_root):
    root, first, second = registry_root
    _damage(root, second, "model.joblib")  # serving never reads it, verification does
    with pytest.raises(ArtifactError, match="model.joblib does not match its sha256"):
        registry.set_default(root, second)
    with pytest.raises(ArtifactError, match="model.joblib does not match"):
        registry.set_shadow(root, second)
    assert artifacts.default_version(root) == first
    assert registry.history(root) == [] and registry.shadow_version(root) is None


def test_rollback_to_a_damaged_version_is_refused_and_keeps_the_history(registry_root):
    root, first, second = registry_root
    registry.set_default(root, second)
    _damage(root, first)
    with pytest.raises(ArtifactError, match="does not match"):
        registry.rollback(root)
    assert artifacts.default_version(root) == second
    assert [e["version"] for e in registry.history(root)] == [first]


def test_a_failing_warm_up_is_a_verification_failure(registry_root, monkeypatch):
    root, _, second = registry_root

    def broken(self, texts):
        raise FloatingPointError("overflow")

    monkeypatch.setattr("tagifai_api.ml.predict.Predictor.predict", broken)
    with pytest.raises(ArtifactError, match="warm-up prediction failed.*FloatingPointError"):
        versions.verify(root, second)


@pytest.mark.parametrize("name", ["nope", "../etc", "", "v1/../../x"])
def test_unknown_versions_list_the_valid_ones(registry_root, name):
    root, first, second = registry_root
    _damage(root, copy_version(root, first, "v30000101T000000000000Z"))
    with pytest.raises(versions.UnknownVersionError) as info:
        registry.set_default(root, name)
    assert info.value.valid == [second, first]  # valid ones only, newest first
    assert artifacts.default_version(root) == first


def test_listing_is_newest_first_with_damaged_versions_and_their_reason(registry_root):
    root, first, second = registry_root
    entries = versions.describe_all(root)
    assert [e["version"] for e in entries] == [second, first]
    assert all(e["valid"] for e in entries)
    entry = entries[1]
    manifest = json.loads((root / first / "manifest.json").read_text())
    assert entry["created_at"] == manifest["created_at"]
    assert entry["sklearn_version"] == manifest["sklearn_version"]
    assert entry["dataset_sha256"] == manifest["dataset_sha256"]
    assert set(entry["metrics"]) == {"f1", "precision", "recall"} and 0 < entry["metrics"]["f1"] <= 1
    _damage(root, second)  # the remembered answer is dropped when a file changes
    damaged = versions.describe_all(root)[0]
    assert damaged["valid"] is False and "model.npz does not match its sha256" in damaged["reason"]
    assert "\n" not in damaged["reason"] and damaged["created_at"]


def test_describe_gives_manifest_args_and_performance(registry_root):
    root, first, _ = registry_root
    described = versions.describe(root, first)
    version = artifacts.load(root, first, compiled=False)
    assert described["manifest"] == version.manifest
    assert described["args"] == version.args and described["performance"] == version.performance


def test_shadow_is_set_replaced_and_cleared(registry_root):
    root, first, second = registry_root
    assert registry.shadow_version(root) is None
    assert registry.set_shadow(root, second) is None
    assert registry.pointers(root) == (first, second)
    assert registry.set_shadow(root, first) == second
    assert registry.clear_shadow(root) == first
    assert registry.clear_shadow(root) is None
    assert registry.pointers(root) == (first, None)


def test_concurrent_switches_lose_no_history(registry_root):
    root, first, second = registry_root
    names = [copy_version(root, second, f"v2999010{i}T000000000000Z") for i in range(1, 7)]
    barrier = threading.Barrier(len(names))

    def switch(name):
        barrier.wait()
        registry.set_default(root, name, verifier=lambda _: None)

    threads = [threading.Thread(target=switch, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # every replaced default is in the history exactly once: the writers took turns
    replaced = [e["version"] for e in registry.history(root)]
    assert sorted([*replaced, artifacts.default_version(root)]) == sorted([first, *names])


def test_history_is_bounded(registry_root, monkeypatch):
    root, first, second = registry_root
    monkeypatch.setattr(registry, "HISTORY_LIMIT", 3)
    for _ in range(4):
        registry.set_default(root, second, verifier=lambda _: None)
        registry.set_default(root, first, verifier=lambda _: None)
    assert len(registry.history(root)) == 3


def test_training_a_new_default_records_the_history(registry_root, trained):
    root, first, _ = registry_root
    new = registry.save_version(root, trained, "0" * 64).version
    assert artifacts.default_version(root) == new
    assert registry.rollback(root) == (new, first)


def test_seed_fills_a_fresh_volume_once_and_never_changes_its_default(registry_root, tmp_path):
    source, first, second = registry_root
    volume = tmp_path / "volume"
    assert registry.seed(volume, source) == [first, second]
    assert registry.pointers(volume) == (first, None)
    assert [e["valid"] for e in versions.describe_all(volume)] == [True, True]
    registry.set_default(volume, second)
    newer = copy_version(source, first, "v29990101T000000000000Z")
    assert registry.seed(volume, source) == [newer]  # a newer image brings its versions
    assert artifacts.default_version(volume) == second  # the volume's choice stands
    assert not [p for p in volume.iterdir() if p.name.startswith(".tmp-")]
