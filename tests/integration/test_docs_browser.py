"""/docs in headless Chromium: Swagger UI loads offline from the app and a real "Try it out" round trip works."""

from __future__ import annotations

import base64
import json

import pytest

from tests import helpers

SCREENSHOT = helpers.ROOT / "reports" / "screenshots" / "docs.png"
OPERATION = "#operations-model-post_predict"

pytestmark = pytest.mark.integration


def test_try_it_out_predicts_in_the_browser(artifacts_dir, tmp_path):
    with helpers.gunicorn(artifacts_dir, workers=1) as api, helpers.chromium(tmp_path / "profile") as page:
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Page.navigate", url=f"{api.url}/docs")
        title = page.wait_for(
            "document.querySelector('.information-container .title')?.textContent", "the API title"
        )
        assert "TagIfAI API" in title

        page.click(f"{OPERATION} .opblock-summary")
        page.click(f"{OPERATION} .try-out__btn")
        example = page.wait_for(f"document.querySelector('{OPERATION} textarea.body-param__text')?.value",
                                "the request body example")
        assert json.loads(example)["texts"][0]["text"].startswith("Transfer learning")
        page.click(f"{OPERATION} .execute")

        body = page.wait_for(
            f"""(() => {{
                const code = document.querySelector('{OPERATION} .live-responses-table tr.response .response-col_description pre');
                return code && code.textContent.includes('predictions') ? code.textContent : null;
            }})()""",
            "the response body",
        )
        status = page.evaluate(
            f"document.querySelector('{OPERATION} .live-responses-table tr.response .response-col_status')?.textContent"
        )
        assert "natural-language-processing" in body
        assert status.strip() == "200"
        assert json.loads(body)["data"]["predictions"][0]["predicted_tag"] == "natural-language-processing"

        shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG")


def execute_predict(page: helpers.DevTools, status: str) -> str:
    """Press Execute on /predict (already in "Try it out"), wait for ``status`` and return the body shown."""
    page.click(f"{OPERATION} .execute")
    row = f"{OPERATION} .live-responses-table tr.response"
    return page.wait_for(
        f"""(() => {{
            const shown = document.querySelector('{row} .response-col_status')?.textContent.trim();
            const body = document.querySelector('{row} .response-col_description pre')?.textContent;
            return shown === '{status}' && body ? body : null;
        }})()""",
        f"a {status} answer",
    )


def test_authorize_button_sends_the_key_in_mode_all(artifacts_dir, tmp_path):
    store = helpers.private_store(artifacts_dir, tmp_path)
    key = helpers.keys_command(store, "create", "--name", "browser", "--role", "predict")
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_DATABASE_URL": store}
    with helpers.gunicorn(artifacts_dir, workers=1, env=env) as api, helpers.chromium(tmp_path / "profile") as page:
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Page.navigate", url=f"{api.url}/docs")  # the page itself needs no key
        page.wait_for("!!document.querySelector('.information-container .title')", "the API title")
        page.click(f"{OPERATION} .opblock-summary")
        page.click(f"{OPERATION} .try-out__btn")
        assert "API key" in execute_predict(page, "401")

        page.click(".scheme-container button.authorize")
        page.click(".auth-container input")
        page.call("Input.insertText", text=key)
        page.click(".auth-container .auth-btn-wrapper button.authorize")
        page.wait_for("document.querySelector('.auth-container h6')?.textContent === 'Authorized'", "authorized")
        page.click(".auth-container .auth-btn-wrapper button.btn-done")
        body = execute_predict(page, "200")
        assert json.loads(body)["data"]["predictions"][0]["predicted_tag"] == "natural-language-processing"
