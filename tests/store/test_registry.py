"""The registry on the store, on SQLite and on a real PostgreSQL: the default with its history,
rollbacks, the shadow, verification before any change, training and seeding, and the audit log."""

from __future__ import annotations

import threading

import pytest

from tagifai_api.ml import artifacts, versions
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.store.database import Store
from tagifai_api.store.registry import NoDefaultError, Registry, RegistryConflictError, VerificationError
from tests.helpers import copy_version


def _damage(root, version, name="model.npz"):
    path = root / version / name
    path.write_bytes(path.read_bytes() + b"\0")


def _unchecked(version):
    return None


@pytest.fixture
def opened(store_url):
    """``open(root)``: a registry of ``root`` in the test's store; every store is closed afterwards."""
    stores = []

    def open_(root):
        store = Store(store_url)
        store.upgrade()
        stores.append(store)
        return Registry(store, root)

    yield open_
    for store in stores:
        store.close()


@pytest.fixture
def setup(opened, registry_root):
    """``(registry, root, first, second)``: the two-version folder, the first version the default."""
    root, first, second = registry_root
    registry = opened(root)
    registry.set_default(first, verifier=_unchecked, reason="trained")
    return registry, root, first, second


def snapshot(registry: Registry) -> tuple:
    """Everything a refused change must leave as it was."""
    store = registry.store
    return store.pointers(), store.history(), store.audit(), store.generation()


def test_set_default_keeps_the_previous_one_in_the_history(setup):
    registry, root, first, second = setup
    assert registry.set_default(second) == (first, second)
    assert registry.default_version() == second and registry.resolve("default") == second
    assert [e["version"] for e in registry.history()] == [first]
    generation = registry.store.generation()
    assert registry.set_default(second) == (second, second)  # already the default: nothing recorded
    assert [e["version"] for e in registry.history()] == [first]
    assert registry.store.generation() == generation


def test_rollback_walks_back_through_the_history_then_refuses(setup):
    registry, root, first, second = setup
    third = copy_version(root, second, "v29990101T000000000000Z")
    registry.set_default(second)
    registry.set_default(third)
    assert registry.rollback() == (third, second)
    assert registry.rollback() == (second, first)
    assert registry.default_version() == first
    before = snapshot(registry)
    with pytest.raises(RegistryConflictError, match="history is empty"):
        registry.rollback()
    assert snapshot(registry) == before


def test_a_version_failing_verification_changes_nothing(setup):
    registry, root, first, second = setup
    _damage(root, second, "model.joblib")  # serving never reads it, verification does
    before = snapshot(registry)
    with pytest.raises(VerificationError, match="model.joblib does not match its sha256"):
        registry.set_default(second)
    with pytest.raises(VerificationError, match="model.joblib does not match"):
        registry.set_shadow(second)
    assert snapshot(registry) == before
    assert registry.default_version() == first and registry.shadow_version() is None


def test_rollback_to_a_damaged_version_is_refused_and_keeps_the_history(setup):
    registry, root, first, second = setup
    registry.set_default(second)
    _damage(root, first)
    before = snapshot(registry)
    with pytest.raises(VerificationError, match="does not match"):
        registry.rollback()
    assert snapshot(registry) == before
    assert registry.default_version() == second
    assert [e["version"] for e in registry.history()] == [first]


def test_a_failing_warm_up_refuses_the_switch(setup, monkeypatch):
    registry, root, first, second = setup

    def broken(self, texts):
        raise FloatingPointError("overflow")

    monkeypatch.setattr("tagifai_api.ml.predict.Predictor.predict", broken)
    before = snapshot(registry)
    with pytest.raises(VerificationError, match="warm-up prediction failed.*FloatingPointError"):
        registry.set_default(second)
    assert snapshot(registry) == before


@pytest.mark.parametrize("name", ["nope", "../etc", "", "v1/../../x"])
def test_unknown_versions_list_the_valid_ones_and_change_nothing(setup, name):
    registry, root, first, second = setup
    _damage(root, copy_version(root, first, "v30000101T000000000000Z"))
    before = snapshot(registry)
    for change in (registry.set_default, registry.set_shadow):
        with pytest.raises(versions.UnknownVersionError) as info:
            change(name)
        assert info.value.valid == [second, first]  # valid ones only, newest first
    assert snapshot(registry) == before


def test_shadow_is_set_replaced_and_cleared(setup):
    registry, root, first, second = setup
    assert registry.shadow_version() is None
    assert registry.set_shadow(second) is None
    assert registry.pointers() == (first, second)
    assert registry.set_shadow(first) == second
    assert registry.clear_shadow() == first
    generation = registry.store.generation()
    assert registry.clear_shadow() is None  # nothing to clear: nothing recorded
    assert registry.store.generation() == generation
    assert registry.pointers() == (first, None)


def test_changes_are_audited_with_the_key_and_the_reason(setup):
    registry, root, first, second = setup
    registry.set_default(second, key_name="ops", reason="better F1")
    registry.set_shadow(first, key_name="ops", reason="compare")
    registry.clear_shadow(key_name="ops")
    registry.rollback(key_name="ops", reason="a regression")
    assert [(e["action"], e["from"], e["to"], e["key_name"], e["reason"]) for e in registry.store.audit()] == [
        ("rollback", second, first, "ops", "a regression"),
        ("clear_shadow", first, None, "ops", None),
        ("set_shadow", None, first, "ops", "compare"),
        ("set_default", first, second, "ops", "better F1"),
        ("set_default", None, first, None, "trained"),
    ]


def test_concurrent_switches_lose_no_history(setup):
    registry, root, first, second = setup
    names = [copy_version(root, second, f"v2999010{i}T000000000000Z") for i in range(1, 7)]
    barrier = threading.Barrier(len(names))
    errors = []

    def switch(name):
        barrier.wait()
        try:
            registry.set_default(name, verifier=_unchecked)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=switch, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    # every replaced default is in the history exactly once: the writers took turns
    replaced = [e["version"] for e in registry.history()]
    assert sorted([*replaced, registry.default_version()]) == sorted([first, *names])


def test_history_is_bounded(setup, monkeypatch):
    registry, root, first, second = setup
    monkeypatch.setattr("tagifai_api.store.database.HISTORY_LIMIT", 3)
    for _ in range(4):
        registry.set_default(second, verifier=_unchecked)
        registry.set_default(first, verifier=_unchecked)
    assert len(registry.history()) == 3


def test_training_a_new_default_records_the_history(setup, trained):
    registry, root, first, _ = setup
    new = registry.save_version(trained, "0" * 64).version
    assert registry.default_version() == new
    assert registry.store.audit(1)[0] | {"at": None} == {"at": None, "action": "set_default", "from": first,
                                                        "to": new, "key_name": None, "reason": "trained"}
    assert registry.rollback() == (new, first)
    kept = registry.save_version(trained, "0" * 64, make_default=False).version
    assert registry.default_version() == first and kept in artifacts.list_versions(root)


def test_no_default_is_a_clear_error(opened, tmp_path):
    registry = opened(tmp_path / "empty")
    with pytest.raises(NoDefaultError, match="no default model in the state store") as info:
        registry.resolve("default")
    assert isinstance(info.value, ArtifactError) and registry.resolve("v1") == "v1"


def test_seed_fills_a_fresh_volume_once_and_never_changes_its_default(opened, registry_root, tmp_path):
    source, first, second = registry_root
    volume = tmp_path / "volume"
    registry = opened(volume)
    assert registry.seed(source) == [first, second]
    # the source's versions carry no state: the newest of them becomes the default
    assert registry.pointers() == (second, None)
    assert registry.store.audit(1)[0]["reason"] == f"seeded from {source}"
    assert [e["valid"] for e in versions.describe_all(volume)] == [True, True]
    registry.set_default(first)
    newer = copy_version(source, first, "v29990101T000000000000Z")
    assert registry.seed(source) == [newer]  # a newer image brings its versions
    assert registry.default_version() == first  # the volume's choice stands
    assert not [p for p in volume.iterdir() if p.name.startswith(".tmp-")]
