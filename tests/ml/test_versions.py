"""Which versions are sound and can serve: verification with its warm-up, and the listing of every
version with why a broken one is broken. Model code only: no store here."""

from __future__ import annotations

import json

import pytest

from tagifai_api.ml import artifacts, versions
from tagifai_api.ml.artifacts import ArtifactError
from tests.helpers import copy_version


def _damage(root, version, name="model.npz"):
    path = root / version / name
    path.write_bytes(path.read_bytes() + b"\0")


def test_a_failing_warm_up_is_a_verification_failure(registry_root, monkeypatch):
    root, _, second = registry_root

    def broken(self, texts):
        raise FloatingPointError("overflow")

    monkeypatch.setattr("tagifai_api.ml.predict.Predictor.predict", broken)
    with pytest.raises(ArtifactError, match="warm-up prediction failed.*FloatingPointError"):
        versions.verify(root, second)


def test_verification_checks_the_files_serving_never_reads(registry_root):
    root, first, _ = registry_root
    _damage(root, first, "model.joblib")
    model, predictor = versions.verify(root, first, every_file=False)  # what a worker loading it checks
    assert model.version == predictor.version == first
    with pytest.raises(ArtifactError, match="model.joblib does not match its sha256"):
        versions.verify(root, first)  # what a switch checks


@pytest.mark.parametrize("name", ["nope", "../etc", "", "v1/../../x"])
def test_unknown_versions_list_the_valid_ones(registry_root, name):
    root, first, second = registry_root
    _damage(root, copy_version(root, first, "v30000101T000000000000Z"))
    with pytest.raises(versions.UnknownVersionError) as info:
        versions.verify(root, name)
    assert info.value.valid == [second, first]  # valid ones only, newest first


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
