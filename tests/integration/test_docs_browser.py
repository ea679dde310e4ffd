"""/docs in headless Chromium: Swagger UI loads offline from the app and a real "Try it out" round trip works.

Driven over the Chrome DevTools protocol with websocket-client, so no browser download or
driver package is needed: Debian's chromium is the browser.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import websocket

from tests.integration import servers

SCREENSHOT = servers.ROOT / "reports" / "screenshots" / "docs.png"
OPERATION = "#operations-model-post_predict"

pytestmark = pytest.mark.integration


class DevTools:
    """The few Chrome DevTools protocol calls the test needs, over one page's websocket."""

    def __init__(self, ws_url: str):
        # no Origin header: Chromium refuses devtools websockets from origins it was not told to allow
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = 20.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element, after scrolling it into view."""
        box = self.wait_for(
            f"""(() => {{
                const el = document.querySelector({json.dumps(selector)});
                if (!el || el.disabled) return null;
                el.scrollIntoView({{block: "center"}});
                const r = el.getBoundingClientRect();
                return r.width && r.height ? {{x: r.x + r.width / 2, y: r.y + r.height / 2}} : null;
            }})()""",
            f"a clickable {selector}",
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    def close(self) -> None:
        self.ws.close()


@contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    """Headless Chromium with a fresh profile, reachable only on loopback; yields its page's DevTools."""
    binary = servers.require_binary("chromium", "chromium-browser", "google-chrome")
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1280,1400",
        # any host but loopback fails to resolve, so nothing leaves the machine
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        "about:blank",
    ]
    log = open(profile.parent / "chromium.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    devtools = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {(profile.parent / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json() if t["type"] == "page"]
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def test_try_it_out_predicts_in_the_browser(artifacts_dir, tmp_path):
    with servers.gunicorn(artifacts_dir, workers=1) as api, chromium(tmp_path / "profile") as page:
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


def execute_predict(page: DevTools, status: str) -> str:
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
    from tagifai_api.auth.keys import KeyStore

    keys_file = tmp_path / "api_keys.json"
    key = KeyStore(keys_file).create("browser", "predict")
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_API_KEYS_FILE": str(keys_file)}
    with servers.gunicorn(artifacts_dir, workers=1, env=env) as api, chromium(tmp_path / "profile") as page:
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
