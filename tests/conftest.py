"""Shared fixtures: a model trained once per session into a temporary folder, apps and clients."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tagifai_api import create_app, settings
from tagifai_api.ml import artifacts, data
from tagifai_api.ml import train as training
from tagifai_api.store import registry


@pytest.fixture(scope="session")
def train_args() -> dict:
    """The project's training args (the same ones the default model uses)."""
    return json.loads(settings.ARGS_FILE.read_text())


@pytest.fixture(scope="session")
def dataset():
    """The shipped labelled projects."""
    return data.load_dataset(settings.DATA_FILE)


@pytest.fixture(scope="session")
def trained(dataset, train_args):
    """One training run, shared by every test that only reads its result."""
    return training.train(dataset, train_args)


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory, trained) -> Path:
    """An artifacts folder holding one default version of the trained model."""
    root = tmp_path_factory.mktemp("artifacts")
    registry.save_version(root, trained, artifacts.sha256_file(settings.DATA_FILE))
    return root


@pytest.fixture
def make_app(artifacts_dir):
    """Build apps with overrides; batchers are closed afterwards."""
    apps = []

    def factory(**overrides):
        config = {"ARTIFACTS_DIR": str(artifacts_dir), "LOG_LEVEL": "WARNING", **overrides}
        app = create_app(config)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["tagifai"].service.close()


@pytest.fixture
def model_hook(monkeypatch):
    """``model_hook(service, hook)`` sends that service's model calls, plain and explained, through
    ``hook(call, items)`` (``call`` is the predictor's own method): to gate, slow or fail inference."""

    def install(service, hook):
        monkeypatch.setattr(service, "_run_model", lambda predictor, cleaned: hook(predictor.predict_clean, cleaned))
        monkeypatch.setattr(service, "_run_explainer", lambda predictor, texts: hook(predictor.explain, list(texts)))
        return service

    return install


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def two_versions_template(tmp_path_factory, trained) -> tuple[Path, str, str]:
    """An artifacts folder with an older default and a newer candidate that tags more texts 'other'
    (a higher threshold), so the two disagree on some texts."""
    root = tmp_path_factory.mktemp("two-versions")
    sha = artifacts.sha256_file(settings.DATA_FILE)
    first = registry.save_version(root, trained, sha).version
    strict = dataclasses.replace(trained, args={**trained.args, "threshold": 0.75})
    second = artifacts.save(root, strict, sha).version
    return root, first, second


@pytest.fixture
def registry_root(tmp_path, two_versions_template) -> tuple[Path, str, str]:
    """A private copy of the two-version folder, free to switch and damage: ``(root, default, candidate)``."""
    template, first, second = two_versions_template
    root = tmp_path / "artifacts"
    shutil.copytree(template, root)
    return root, first, second
