import json
import shutil

import numpy as np
import pytest

from tagifai_api import settings
from tagifai_api.ml import artifacts
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.ml.predict import Predictor
from tests.helpers import default_of, load_default, open_registry


@pytest.fixture
def root(tmp_path, artifacts_dir):
    """A private copy of the session's artifacts, free to damage."""
    dest = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, dest)
    return dest


def test_layout_and_manifest(root):
    version = load_default(root)
    names = {p.name for p in version.path.iterdir()}
    assert names == {"model.joblib", "model.npz", "args.json", "performance.json", "labels.json", "profile.json",
                     "manifest.json"}
    manifest = version.manifest
    assert manifest["sklearn_version"] == artifacts.sklearn_version()
    assert manifest["dataset_sha256"] == artifacts.sha256_file(settings.DATA_FILE)
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert "threshold" in version.args
    # the default is recorded in the store, not in a file beside the versions
    assert default_of(root) == version.version
    assert not (root / "DEFAULT").exists()


def test_round_trip_gives_the_same_predictions(root, trained):
    version = load_default(root)
    texts = ["Transfer learning with transformers for text classification.", "YOLO object detection", ""]
    cleaned = [trained.compiled.clean(t) for t in texts]
    pipeline = artifacts.load_pipeline(version)
    assert np.array_equal(pipeline.predict_proba(cleaned), trained.pipeline.predict_proba(cleaned))
    assert np.abs(version.compiled.predict_proba(cleaned) - trained.pipeline.predict_proba(cleaned)).max() < 1e-9
    tags = [p["predicted_tag"] for p in Predictor(version).predict(texts)]
    assert tags[:2] == ["natural-language-processing", "computer-vision"]


def test_new_version_becomes_default_and_old_ones_stay(root, trained):
    registry = open_registry(root)
    first = registry.default_version()
    before = artifacts.list_versions(root)
    second = registry.save_version(trained, "0" * 64).version
    assert second != first and first in before
    assert artifacts.list_versions(root) == sorted([*before, second])
    assert registry.default_version() == second
    registry.set_default(first)
    registry.store.close()
    assert load_default(root).version == first


def _version_dir(root):
    return root / default_of(root)


@pytest.mark.parametrize("name", ["model.npz", "args.json", "labels.json", "performance.json"])
def test_missing_file_is_a_clear_error(root, name):
    (_version_dir(root) / name).unlink()
    with pytest.raises(ArtifactError, match=f"{name} is missing"):
        load_default(root)


@pytest.mark.parametrize("name", ["model.npz", "args.json", "model.joblib"])
def test_altered_file_is_a_clear_error(root, name):
    path = _version_dir(root) / name
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        version = load_default(root, compiled=name != "model.joblib")
        artifacts.load_pipeline(version)


def test_incompatible_sklearn_version_is_a_clear_error(root):
    manifest_path = _version_dir(root) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["sklearn_version"] = "0.24.2"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"scikit-learn 0\.24\.2.*is installed"):
        load_default(root)


def test_missing_or_broken_manifest(root):
    manifest_path = _version_dir(root) / "manifest.json"
    manifest_path.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_default(root)
    manifest_path.unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing"):
        load_default(root)


@pytest.mark.parametrize("content", ["[]", '{"format": 1, "files": null}', '"just a string"'])
def test_manifest_of_the_wrong_shape_is_a_clear_error(root, content):
    (_version_dir(root) / "manifest.json").write_text(content)
    with pytest.raises(ArtifactError, match="does not describe a model version"):
        load_default(root)


def test_versions_are_readable_by_other_users(artifacts_dir):
    """The Docker image serves as a non-root user the versions it trained as root."""
    version = load_default(artifacts_dir)
    assert version.path.stat().st_mode & 0o777 == 0o755
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in version.path.iterdir())


def test_no_default_and_unknown_version(tmp_path, root):
    with pytest.raises(ArtifactError, match="no default model"):
        load_default(tmp_path / "empty")
    with pytest.raises(ArtifactError, match="no model version 'v1'"):
        artifacts.load(root, "v1")
    with pytest.raises(ArtifactError, match="invalid model version name"):
        artifacts.load(root, "../etc")
    # a default recorded without verification (written to the store by hand) still cannot step outside
    registry = open_registry(root)
    registry.store.set_default("../../etc", verifier=lambda _: None)
    registry.store.close()
    with pytest.raises(ArtifactError, match="invalid model version name"):
        load_default(root)
