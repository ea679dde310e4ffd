"""/health/live and /health/ready: the probes a load balancer and Kubernetes act on.

A readiness probe only reads the status code, so "not ready" has to be a 503, never a 200 whose
body says ready: false; liveness must not depend on the model, or a missing model restarts pods
in a loop instead of keeping them out of rotation.
"""

import os

import pytest

from tests.helpers import check_envelope


@pytest.fixture
def no_model_client(make_app, tmp_path):
    """A client of an app whose artifacts directory holds no model."""
    empty = tmp_path / "empty-artifacts"
    empty.mkdir()
    return make_app(ARTIFACTS_DIR=str(empty)).test_client()


def test_live(client):
    body = check_envelope(client.get("/health/live"), 200)
    assert body["data"]["pid"] == os.getpid()


def test_ready_with_a_model(client, app):
    data = check_envelope(client.get("/health/ready"), 200)["data"]
    assert data["ready"] is True
    assert data["model_version"] == app.extensions["tagifai"].service.model.version
    assert data["pid"] == os.getpid()
    assert data["uptime_seconds"] >= 0


def test_ready_is_503_without_a_model(no_model_client):
    body = check_envelope(no_model_client.get("/health/ready"), 503)
    assert body["message"] == "The model is not loaded."
    data = body["data"]
    assert data["ready"] is False
    assert data["model_version"] is None
    assert data["reason"]
    assert data["pid"] == os.getpid()


def test_live_is_200_without_a_model(no_model_client):
    body = check_envelope(no_model_client.get("/health/live"), 200)
    assert body["data"]["pid"] == os.getpid()
