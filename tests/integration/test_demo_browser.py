"""/demo in headless Chromium: a person types a description, submits from the keyboard, and reads the
tag, the bars and the shaded words; errors are shown in words; nothing is fetched from elsewhere."""

from __future__ import annotations

import json

import pytest
import requests

from tests import helpers

SCREENSHOTS = helpers.ROOT / "reports" / "screenshots"

pytestmark = pytest.mark.integration

READ_PAGE = """(() => {
  const result = document.getElementById("result");
  if (result.hidden) return null;
  return {
    tag: document.getElementById("tag").textContent,
    explained: document.getElementById("explained-tag").textContent,
    bars: Array.from(document.querySelectorAll("#bars .bar")).map(b => ({
      tag: b.dataset.tag, value: b.querySelector(".value").textContent,
      width: b.querySelector(".fill").style.width, threshold: b.querySelector(".threshold-mark")?.style.left})),
    words: Array.from(document.querySelectorAll("#words .word")).map(w => ({
      text: w.textContent, side: w.classList.contains("for") ? "for" : w.classList.contains("against") ? "against" :
        "dropped", contribution: Number(w.dataset.contribution), tip: w.dataset.tip,
      shade: getComputedStyle(w).backgroundColor})),
    shown: document.getElementById("words").textContent,
  };
})()"""


def open_demo(page, url: str) -> None:
    for domain in ("Page", "Runtime", "Network", "Log"):
        page.call(f"{domain}.enable")
    page.call("Page.navigate", url=f"{url}/demo")
    page.wait_for("document.readyState === 'complete' && document.getElementById('text') !== null", "the page")


def submit_from_keyboard(page, text: str) -> None:
    """Type ``text`` into the description box, Tab to the button and press Enter."""
    page.evaluate("document.getElementById('result').hidden = true; document.getElementById('error').hidden = true")
    page.evaluate("document.getElementById('text').value = ''")
    page.click("#text")
    if text:
        page.call("Input.insertText", text=text)
    page.press("Tab", 9)
    assert page.evaluate("document.activeElement.id") == "submit"
    page.press("Enter", 13, text="\r")


def error_shown(page) -> str:
    return page.wait_for("(() => { const e = document.getElementById('error'); return e.hidden ? null : e.textContent; })()",
                         "an error message")


def requested_urls(page) -> list[str]:
    page.evaluate("1")  # drain the events sent so far
    return [e["params"]["request"]["url"] for e in page.events if e["method"] == "Network.requestWillBeSent"]


def test_demo_tags_and_shades_words_in_the_browser(artifacts_dir, tmp_path):
    with helpers.gunicorn(artifacts_dir, workers=1) as api, helpers.chromium(tmp_path / "profile") as page:
        headers = requests.get(f"{api.url}/demo", timeout=5).headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        open_demo(page, api.url)

        for expected, text in helpers.LESSON_TAGS.items():
            submit_from_keyboard(page, text)
            shown = page.wait_for(READ_PAGE, "the answer")
            assert shown["tag"] == shown["explained"] == expected
            api_words = requests.post(f"{api.url}/predict", json={"texts": [{"text": text}], "explain": True},
                                      timeout=10).json()["data"]["predictions"][0]["explanation"]["words"]
            assert [w["text"] for w in shown["words"]] == [w["text"] for w in api_words]
            assert shown["shown"] == text  # the words are laid over the text exactly as typed
            for w, a in zip(shown["words"], api_words):
                assert w["contribution"] == pytest.approx(a["contribution"])
                assert w["side"] == ("dropped" if a["dropped"] else "for" if a["contribution"] >= 0 else "against")
                if not a["dropped"]:
                    assert w["shade"] not in {"", "rgba(0, 0, 0, 0)"} and w["tip"].endswith(f"to the {expected} score")
            assert {w["side"] for w in shown["words"]} >= {"for", "dropped"}
            top = shown["bars"][0]
            assert top["tag"] == expected and top["width"].endswith("%")
            assert all(b["threshold"] for b in shown["bars"])  # the threshold is marked on every bar
            # the strongest word has the focus in the screenshot, so its tooltip shows
            page.evaluate("""[...document.querySelectorAll('#words .word.for')]
                .sort((a, b) => b.dataset.contribution - a.dataset.contribution)[0].focus()""")
            page.screenshot(SCREENSHOTS / f"demo-{expected}.png")

        # the words are one tab stop; arrow keys move between them and each shows its number
        page.evaluate("document.querySelector('#words .word[tabindex=\"0\"]').focus()")
        first = page.evaluate("document.activeElement.textContent")
        page.press("ArrowRight", 39)
        second = page.evaluate("[document.activeElement.textContent, document.activeElement.dataset.tip]")
        assert second[0] != first and second[1]

        submit_from_keyboard(page, "")
        assert "empty" in error_shown(page)
        page.evaluate("document.getElementById('text').value = 'x'.repeat(10001)")
        page.click("#submit")
        message = error_shown(page)
        assert "too long" in message and "10,000" in message

        page.call("Emulation.setDeviceMetricsOverride", width=375, height=812, deviceScaleFactor=1, mobile=True)
        submit_from_keyboard(page, helpers.LESSON_TAGS["natural-language-processing"])
        page.wait_for(READ_PAGE, "the answer at phone width")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(SCREENSHOTS / "demo-phone.png")

        urls = requested_urls(page)
        assert any(u.endswith("/demo/static/demo.js") for u in urls) and any(u.endswith("/predict") for u in urls)
        outside = [u for u in urls if not u.startswith(api.url + "/")]
        assert outside == [], outside
        logged = [e["params"]["entry"]["text"] for e in page.events if e["method"] == "Log.entryAdded"]
        assert not [t for t in logged if "Content Security Policy" in t], logged


def test_demo_says_a_key_is_needed_and_works_with_a_pasted_one(artifacts_dir, tmp_path):
    store = helpers.private_store(artifacts_dir, tmp_path)
    key = helpers.keys_command(store, "create", "--name", "demo", "--role", "predict")
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_DATABASE_URL": store}
    with helpers.gunicorn(artifacts_dir, workers=1, env=env) as api, helpers.chromium(tmp_path / "profile") as page:
        open_demo(page, api.url)  # the page itself is open, like /docs
        submit_from_keyboard(page, helpers.LESSON_TAGS["computer-vision"])
        message = error_shown(page)
        assert "needs an API key" in message
        page.screenshot(SCREENSHOTS / "demo-401.png")

        page.click("#key-box summary")
        page.click("#key")
        page.call("Input.insertText", text=key)
        submit_from_keyboard(page, helpers.LESSON_TAGS["computer-vision"])
        assert page.wait_for(READ_PAGE, "the answer with a key")["tag"] == "computer-vision"
        assert page.evaluate("sessionStorage.length") == 0  # kept in memory only, unless asked
        predicts = [e for e in page.events if e["method"] == "Network.requestWillBeSent"
                    and e["params"]["request"]["url"].endswith("/predict")]
        assert predicts[-1]["params"]["request"]["headers"]["Authorization"] == f"Bearer {key}"
        assert json.loads(predicts[-1]["params"]["request"]["postData"])["explain"] is True
