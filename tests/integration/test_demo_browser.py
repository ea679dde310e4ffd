"""/demo in headless Chromium: a person types a description, submits from the keyboard, and reads the
tag, the bars and the shaded words; corrects a wrong tag, which live accuracy then counts (or, with no
logged prediction to name, which is kept as a hand-tagged text); errors are shown in words; nothing is
fetched from elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tagifai_api.auth.keys import KeyStore
from tagifai_api.serving.predlog import text_hash
from tagifai_api.store.database import Store
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


def correct_from_keyboard(page, tag: str) -> None:
    """Open "Wrong tag?" with Enter, pick ``tag`` with the arrow keys, Tab to the button and press Enter."""
    page.evaluate("document.querySelector('#correct-box summary').focus()")
    if not page.evaluate("document.getElementById('correct-box').open"):
        page.press("Enter", 13, text="\r")
    page.press("Tab", 9)
    assert page.evaluate("document.activeElement.id") == "correct-tag"
    options = page.evaluate("[...document.getElementById('correct-tag').options].map(o => o.value)")
    steps = options.index(tag) - page.evaluate("document.getElementById('correct-tag').selectedIndex")
    for _ in range(abs(steps)):
        page.press("ArrowDown", 40) if steps > 0 else page.press("ArrowUp", 38)
    assert page.evaluate("document.getElementById('correct-tag').value") == tag
    page.press("Tab", 9)
    assert page.evaluate("document.activeElement.id") == "correct-submit"
    page.press("Enter", 13, text="\r")


def correction_said(page) -> str:
    """What the page says once the service has answered the correction (errors start with "error: ")."""
    return page.wait_for("""(() => {
        const error = document.getElementById('correct-error');
        if (!error.hidden) return 'error: ' + error.textContent;
        const said = document.getElementById('correct-status').textContent;
        return /^(Recorded|Updated)/.test(said) ? said : null;
      })()""", "what the service said about the correction")


def reset_correction(page) -> None:
    page.evaluate("document.getElementById('correct-status').textContent = ''; "
                  "document.getElementById('correct-error').hidden = true")


def sent(page, path: str) -> list[dict]:
    """The requests the page sent to ``path`` so far."""
    page.evaluate("1")  # drain the events sent so far
    return [e["params"]["request"] for e in page.events
            if e["method"] == "Network.requestWillBeSent" and e["params"]["request"]["url"].endswith(path)]


def request_ids(page, path: str) -> list[str]:
    """The X-Request-ID of each answer the page received from ``path``."""
    page.evaluate("1")
    return [next(v for k, v in e["params"]["response"]["headers"].items() if k.lower() == "x-request-id")
            for e in page.events
            if e["method"] == "Network.responseReceived" and e["params"]["response"]["url"].endswith(path)]


def private_copy(artifacts_dir: Path, tmp_path: Path, key_name: str, role: str) -> tuple[Path, str]:
    """A copy of the session's artifacts folder (its store too, so feedback and keys stay in this test)
    holding a new key; the folder and the key."""
    root = tmp_path / "artifacts"
    shutil.copytree(artifacts_dir, root)
    store = Store(helpers.state_url(root))
    try:
        return root, KeyStore(store).create(key_name, role)
    finally:
        store.close()


def no_policy_violations(page) -> None:
    page.evaluate("1")
    logged = [e["params"]["entry"]["text"] for e in page.events if e["method"] == "Log.entryAdded"]
    assert not [t for t in logged if "Content Security Policy" in t], logged


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
    root, key = private_copy(artifacts_dir, tmp_path, "demo", "predict")
    env = {"TAGIFAI_AUTH": "all", "TAGIFAI_PREDICTION_LOG": "off"}
    with helpers.gunicorn(root, workers=1, env=env) as api, helpers.chromium(tmp_path / "profile") as page:
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
        no_policy_violations(page)


def test_demo_sends_the_text_when_the_service_has_no_record_of_the_prediction(artifacts_dir, tmp_path):
    """With the prediction log off, the correction by request id finds nothing (twice, the second after the
    log's half second); the page then sends the text it tagged, which the store keeps as a hand-tagged text
    (no live accuracy), and a change of mind replaces that correction rather than adding one."""
    root, key = private_copy(artifacts_dir, tmp_path, "corrector", "predict")
    text = helpers.LESSON_TAGS["computer-vision"]
    with helpers.gunicorn(root, workers=1, env={"TAGIFAI_PREDICTION_LOG": "off"}) as api, \
            helpers.chromium(tmp_path / "profile") as page:
        open_demo(page, api.url)
        page.click("#key-box summary")
        page.click("#key")
        page.call("Input.insertText", text=key)
        submit_from_keyboard(page, text)
        assert page.wait_for(READ_PAGE, "the answer")["tag"] == "computer-vision"
        predict_id = request_ids(page, "/predict")[-1]

        correct_from_keyboard(page, "mlops")
        said = correction_said(page)
        assert said.startswith("Recorded as a hand-tagged text: the right tag is mlops."), said
        assert "does not count toward the model’s live accuracy" in said and "can be trained on" in said
        page.screenshot(SCREENSHOTS / "demo-correction-by-text.png")
        tries = sent(page, "/feedback")
        assert [json.loads(t["postData"])["feedback"] for t in tries] == [
            [{"request_id": predict_id, "index": 0, "tag": "mlops"}]] * 2 + [[{"text": text, "tag": "mlops"}]]
        assert all(t["headers"]["Authorization"] == f"Bearer {key}" for t in tries)

        # the request id is known to be unknown now: the change of mind goes by text at once
        reset_correction(page)
        correct_from_keyboard(page, "natural-language-processing")
        said = correction_said(page)
        assert said.startswith("Updated as a hand-tagged text: the right tag is natural-language-processing."), said
        tries = sent(page, "/feedback")[3:]
        assert [json.loads(t["postData"]) for t in tries] == [
            {"feedback": [{"text": text, "tag": "natural-language-processing"}]}]
        quality = requests.get(f"{api.url}/models/default/quality", timeout=5).json()["data"]["all"]
        assert quality["count"] == 0  # a hand-tagged text is no prediction of a version
        no_policy_violations(page)

    store = Store(helpers.state_url(root))
    try:
        rows = list(store.labelled_texts())
    finally:
        store.close()
    assert [(r["text"], r["tag"], r["source"], r["text_hash"]) for r in rows] == [
        (text, "natural-language-processing", "text", text_hash(text))]


def test_demo_sends_a_correction_that_live_accuracy_counts(artifacts_dir, tmp_path):
    """A person corrects a tag from the keyboard: without a key the page says one is needed; with it the
    correction of that very prediction is recorded, /models/<version>/quality counts it, a second choice
    replaces the first, and `feedback export` has its text (the log keeps texts)."""
    root, key = private_copy(artifacts_dir, tmp_path, "corrector", "predict")
    text = helpers.LESSON_TAGS["computer-vision"]
    env = {"TAGIFAI_PREDICTION_LOG": "texts"}  # auth mode admin: /predict is open, /feedback needs a key
    with helpers.gunicorn(root, workers=2, env=env) as api, helpers.chromium(tmp_path / "profile") as page:
        version = requests.get(f"{api.url}/models/default/quality", timeout=5).json()["data"]["model_version"]
        labels = json.loads((root / version / "labels.json").read_text())
        open_demo(page, api.url)
        submit_from_keyboard(page, text)
        assert page.wait_for(READ_PAGE, "the answer")["tag"] == "computer-vision"
        assert page.evaluate("document.getElementById('correct-box').hidden") is False
        options = page.evaluate("[...document.getElementById('correct-tag').options].map(o => [o.value, o.text])")
        assert options[0][0] == "" and sorted(v for v, _ in options[1:]) == sorted(labels)
        assert options[1] == ["computer-vision", "computer-vision (the model’s tag is right)"]  # likeliest first

        correct_from_keyboard(page, "mlops")
        said = correction_said(page)
        assert said.startswith("error: ") and "need an API key" in said and "The service said" in said
        page.screenshot(SCREENSHOTS / "demo-correction-401.png")

        page.click("#key-box summary")
        page.click("#key")
        page.call("Input.insertText", text=key)
        # a new prediction, corrected at once: sooner than the log is written, so the page may send it twice
        submit_from_keyboard(page, text)
        page.wait_for(READ_PAGE, "the second answer")
        correct_from_keyboard(page, "mlops")
        said = correction_said(page)
        assert said.startswith("Recorded: the right tag is mlops.") and "can be trained on" in said, said
        page.evaluate("document.getElementById('correct-submit').focus()")
        page.screenshot(SCREENSHOTS / "demo-correction.png")

        predict_id = request_ids(page, "/predict")[-1]
        corrections = sent(page, "/feedback")
        assert 2 <= len(corrections) <= 3  # the 401, then once, or twice if the log was not written yet
        for request in corrections[1:]:
            assert json.loads(request["postData"]) == {"feedback": [{"request_id": predict_id, "index": 0,
                                                                     "tag": "mlops"}]}
            assert request["headers"]["Authorization"] == f"Bearer {key}"

        quality = requests.get(f"{api.url}/models/{version}/quality", timeout=5).json()["data"]["all"]
        assert (quality["count"], quality["correct"]) == (1, 0)
        assert quality["confusion"]["mlops"]["computer-vision"] == 1  # matrix[actual][predicted]

        # changing one's mind replaces the correction: still one, now saying the model was right
        reset_correction(page)
        correct_from_keyboard(page, "computer-vision")
        assert correction_said(page).startswith("Updated: the right tag is computer-vision.")
        quality = requests.get(f"{api.url}/models/{version}/quality", timeout=5).json()["data"]["all"]
        assert (quality["count"], quality["correct"], quality["accuracy"]) == (1, 1, 1.0)
        no_policy_violations(page)

    output = tmp_path / "feedback.jsonl"
    exported = subprocess.run([sys.executable, "-m", "tagifai_api", "feedback", "export", "--output", str(output)],
                              cwd=helpers.ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "TAGIFAI_DATABASE_URL": helpers.state_url(root),
                                   "TAGIFAI_STORE_UPGRADE": "false"})
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["text"], r["tag"], r["source"]) for r in rows] == [(text, "computer-vision", "prediction")]
