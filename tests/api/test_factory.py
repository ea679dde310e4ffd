"""Settings precedence: defaults < TAGIFAI_* environment < the mapping passed to create_app."""

import pytest

from tagifai_api import settings


def test_precedence(monkeypatch, make_app):
    monkeypatch.setenv("TAGIFAI_MAX_TEXTS", "7")
    monkeypatch.setenv("TAGIFAI_CACHE_SIZE", "5")
    monkeypatch.setenv("TAGIFAI_BATCHING", "false")
    app = make_app(CACHE_SIZE=9)
    assert app.config["MAX_TEXTS"] == 7  # environment over default
    assert app.config["CACHE_SIZE"] == 9  # explicit mapping over environment
    assert app.config["BATCHING"] is False
    assert app.config["MAX_TEXT_LENGTH"] == settings.DEFAULTS["MAX_TEXT_LENGTH"]
    assert app.extensions["tagifai"].service.batcher is None


def test_env_values_are_typed_and_checked():
    assert settings.from_env({"TAGIFAI_BATCH_MAX_WAIT_MS": "0.5"})["BATCH_MAX_WAIT_MS"] == 0.5
    with pytest.raises(ValueError, match="TAGIFAI_MAX_TEXTS"):
        settings.from_env({"TAGIFAI_MAX_TEXTS": "many"})
    with pytest.raises(ValueError, match="unknown setting TAGIFAI_MAX_TEXT\\b"):
        settings.from_env({"TAGIFAI_MAX_TEXT": "5"})


def test_blueprints_registered(app):
    assert {"index", "performance", "args", "predict"} <= set(app.blueprints)


def test_openapi_document_comes_from_the_schemas(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/", "/performance", "/args", "/args/{arg}", "/predict"} <= set(spec["paths"])
    request = spec["components"]["schemas"]["PredictRequest"]
    assert request["properties"]["texts"]["maxItems"] == 100
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["example"]["texts"][0]["text"].startswith("Transfer learning")


def test_docs_page_and_its_assets_are_served_locally(client):
    page = client.get("/docs").get_data(as_text=True)
    assert "swagger-ui-bundle.js" in page and "http" not in page.split("<body>")[1]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        r = client.get(f"/docs/static/{asset}")
        assert r.status_code == 200 and len(r.data) > 10_000
        r.close()


def test_openapi_text_constraints_match_what_the_service_refuses(client):
    """The document's ``minLength``/``pattern`` for a text come from the validators and agree with them."""
    import re
    import sys

    text = client.get("/openapi.json").get_json()["components"]["schemas"]["LimitedText"]["properties"]["text"]
    assert text["minLength"] == 1 and text["maxLength"] == settings.DEFAULTS["MAX_TEXT_LENGTH"]
    pattern = re.compile(text["pattern"])
    blank = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()] + ["\ufeff"]
    for candidate in ["", *blank, "a", " a ", "\x1fé"]:
        allowed = len(candidate) >= text["minLength"] and pattern.search(candidate) is not None
        status = client.post("/predict", json={"texts": [{"text": candidate}]}).status_code
        assert status == (200 if allowed else 422), repr(candidate)
