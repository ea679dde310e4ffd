"""Shared fixtures: a model trained once per session into a temporary folder, apps and clients."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy

from tagifai_api import create_app, settings
from tagifai_api.feedback.service import FeedbackService
from tagifai_api.ml import artifacts, data
from tagifai_api.ml import train as training
from tagifai_api.ml.text import join_text
from tagifai_api.retrain.gate import Gate
from tagifai_api.store.database import Store
from tagifai_api.store.registry import Registry
from tests import helpers
from tests.helpers import open_registry, postgres, state_url


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
    registry = open_registry(root)
    registry.save_version(trained, artifacts.sha256_file(settings.DATA_FILE))
    registry.store.close()
    return root


@pytest.fixture
def make_app(artifacts_dir, tmp_path):
    """Build apps with overrides; batchers are closed afterwards. Each test's apps share a store of
    their own: a copy of the session folder's, or the one inside an ``ARTIFACTS_DIR`` it passes."""
    apps = []
    private = tmp_path / "session-state.db"

    def factory(**overrides):
        root = Path(overrides.get("ARTIFACTS_DIR", artifacts_dir))
        if root == artifacts_dir:
            url = f"sqlite:///{private}"
            if not private.exists():
                url = helpers.private_store(artifacts_dir, tmp_path, private.name)
        else:
            url = state_url(root)
        config = {"ARTIFACTS_DIR": str(artifacts_dir), "DATABASE_URL": url, "LOG_LEVEL": "WARNING",
                  "API_KEYS_FILE": str(tmp_path / "no-old-keys-file.json"), **overrides}
        app = create_app(config)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["tagifai"].close()
        app.extensions["tagifai_auth"].ring.close()
        app.extensions["tagifai"].service.registry.store.close()


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
    registry = open_registry(root)
    first = registry.save_version(trained, sha).version
    strict = dataclasses.replace(trained, args={**trained.args, "threshold": 0.75})
    second = artifacts.save(root, strict, sha).version
    registry.store.close()
    return root, first, second


@pytest.fixture
def registry_root(tmp_path, two_versions_template) -> tuple[Path, str, str]:
    """A private copy of the two-version folder, free to switch and damage: ``(root, default, candidate)``."""
    template, first, second = two_versions_template
    root = tmp_path / "artifacts"
    shutil.copytree(template, root)
    return root, first, second


@pytest.fixture(scope="session")
def pg_server():
    """One scratch PostgreSQL cluster for the whole run (each test gets a database of its own)."""
    with postgres() as server:
        yield server


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An empty store's URL: a SQLite file, and a fresh database on the scratch PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    server = request.getfixturevalue("pg_server")
    name = f"test_{next(_databases)}"
    engine = sqlalchemy.create_engine(server.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def app_store(make_app, artifacts_dir, tmp_path):
    """The store this test's ``make_app()`` apps share, open before any of them is built (to put keys in
    it first): the private copy of the session folder's store."""
    from tagifai_api.store.database import Store

    private = tmp_path / "session-state.db"
    if not private.exists():
        helpers.private_store(artifacts_dir, tmp_path, private.name)
    store = Store(f"sqlite:///{private}")
    yield store
    store.close()


@pytest.fixture
def artifacts_copy(tmp_path, artifacts_dir) -> Path:
    """A private copy of the session's artifacts folder, its store included: free to add keys to,
    switch or damage."""
    root = tmp_path / "artifacts-copy"
    shutil.copytree(artifacts_dir, root)
    return root


# --- a small world in which feedback helps: a default trained on the 300 oldest projects (its
# dataset), and the next 400 projects, tagged right, as the feedback its users send ---------------


@pytest.fixture(scope="session")
def by_time(dataset) -> pd.DataFrame:
    """The dataset, oldest project first."""
    when = pd.to_datetime(dataset["created_on"])
    return dataset.assign(_when=when).sort_values("_when", kind="stable").drop(columns="_when").reset_index(drop=True)


@pytest.fixture(scope="session")
def corrections(by_time, loop_template) -> list[dict]:
    """Projects 300-699 as feedback items, each with its right tag as the loop's default can be told it:
    one of its classes (its 300 projects hold too few mlops ones for that class, so those are ``other``)."""
    root, version = loop_template
    labels = set(artifacts.load(root, version, compiled=False).labels)
    newer = by_time.iloc[300:700]
    return [{"text": join_text(t, d), "tag": tag if tag in labels else "other"}
            for t, d, tag in zip(newer["title"], newer["description"], newer["tag"], strict=True)]


@pytest.fixture(scope="session")
def loop_template(tmp_path_factory, by_time, train_args) -> tuple[Path, str]:
    """A folder with ``small.csv`` (the 300 oldest projects), the default trained on it and its store."""
    root = tmp_path_factory.mktemp("loop")
    by_time.iloc[:300].to_csv(root / "small.csv", index=False)
    store = Store(state_url(root))
    store.upgrade()
    version = Registry(store, root).save_version(training.train(by_time.iloc[:300], train_args),
                                                 artifacts.sha256_file(root / "small.csv")).version
    store.close()
    return root, version


@pytest.fixture
def loop(tmp_path, loop_template) -> tuple[Path, str, Registry]:
    """A private copy of the loop folder: ``(root, default, registry)``; ``root / "small.csv"`` is its dataset."""
    template, version = loop_template
    root = tmp_path / "loop"
    shutil.copytree(template, root)
    registry = Registry(Store(state_url(root)), root)
    yield root, version, registry
    registry.store.close()


@pytest.fixture
def send():
    """``send(store, items)`` records feedback items a request at a time (100 each), in order, each request
    a little later than the one before, as users would send them."""

    def record(store: Store, items: list[dict], key_name: str = "tagger") -> None:
        service = FeedbackService(store)
        for i in range(0, len(items), 100):
            service.record(items[i:i + 100], key_name)
            time.sleep(0.002)

    return record


@pytest.fixture
def passing_gate() -> Gate:
    """The default thresholds: the loop's candidate passes them (+0.09 on the held-out feedback)."""
    return Gate(margin=0.01, tolerance=0.01, min_held_out=50, min_shadow_texts=500)


@pytest.fixture
def loop_config(loop, tmp_path) -> dict:
    """``make_app`` overrides that serve the loop folder and retrain from its dataset."""
    root, _, _ = loop
    return {"ARTIFACTS_DIR": str(root), "DATABASE_URL": state_url(root), "RETRAIN_DATA": str(root / "small.csv"),
            "API_KEYS_FILE": str(tmp_path / "no-old-keys-file.json"), "RETRAIN_NICE": 0}
