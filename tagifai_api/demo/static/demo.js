// TagIfAI demo page: POST /predict with explain: true, then draw the answer; "Wrong tag?" sends the
// right tag to POST /feedback. Same-origin requests only; every piece of text goes into the page
// through textContent, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("form");
  const textBox = $("text");
  const submit = $("submit");
  const keyBox = $("key");
  const remember = $("remember");
  const statusLine = $("status");
  const errorBox = $("error");
  const result = $("result");
  const maxLength = Number(textBox.dataset.maxLength);
  const KEY_STORE = "tagifai-demo-key";
  const fmt = new Intl.NumberFormat("en");

  // the key lives in this variable, and in sessionStorage only when the user asks for it
  let apiKey = sessionStorage.getItem(KEY_STORE) || "";
  keyBox.value = apiKey;
  remember.checked = Boolean(apiKey);
  if (apiKey) $("key-box").open = true;

  keyBox.addEventListener("input", () => {
    apiKey = keyBox.value.trim();
    if (remember.checked && apiKey) sessionStorage.setItem(KEY_STORE, apiKey);
    else sessionStorage.removeItem(KEY_STORE);
  });
  remember.addEventListener("change", () => {
    if (remember.checked && apiKey) sessionStorage.setItem(KEY_STORE, apiKey);
    else sessionStorage.removeItem(KEY_STORE);
  });

  const countLine = $("count");
  function count() {
    const n = Array.from(textBox.value).length;
    countLine.textContent = `${fmt.format(n)} / ${fmt.format(maxLength)} characters · Ctrl+Enter tags it`;
  }
  textBox.addEventListener("input", count);
  count();
  textBox.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  function headers() {
    const h = { "Content-Type": "application/json", Accept: "application/json" };
    if (apiKey) h.Authorization = `Bearer ${apiKey}`;
    return h;
  }

  // a JSON answer and its request id (the X-Request-ID header, which the envelope repeats); an error
  // answer throws, said in words by `explain`
  async function call(path, options, explain = describe) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: headers(), credentials: "same-origin", cache: "no-store" });
    } catch {
      throw new Error("The service could not be reached. Check that it is running, then try again.");
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) throw new Error(explain(response.status, body));
    return { body, requestId: response.headers.get("X-Request-ID") || (body && body["request-id"]) || null };
  }

  // what the service said, quoted after the page's own words
  const quoted = (body) => (body && body.message ? ` (The service said: “${body.message}”)` : "");

  // an error answer, said in words a person can act on
  function describe(status, body) {
    const said = quoted(body);
    if (status === 401) {
      return "This service needs an API key. Open “API key” below the button, paste your key, and try again." + said;
    }
    if (status === 403) return "This API key is not allowed to tag texts." + said;
    if (status === 413) return "The description is far too long for this service." + said;
    if (status === 422) {
      const errors = (body && body.data && body.data.errors) || {};
      const textErrors = ((errors.texts || {})[0] || {}).text || [];
      const words = textErrors.map((m) => {
        if (/empty|whitespace|blank/i.test(m)) return "Please type a description first: the box is empty.";
        const max = /maximum length (\d+)/i.exec(m);
        if (max) {
          return `The description is too long: ${fmt.format(Array.from(textBox.value).length)} characters, ` +
            `the limit is ${fmt.format(Number(max[1]))}. Shorten it and try again.`;
        }
        return m;
      });
      return words.length ? words.join(" ") : "The request was not valid." + said;
    }
    if (status === 429) return "Too many requests from this address; wait a moment and try again." + said;
    if (status === 503 || status === 504) return "The service is busy or still starting; try again in a moment." + said;
    return `The service answered with an error (HTTP ${status}).` + said;
  }

  function showError(message) {
    errorBox.replaceChildren();
    const p = document.createElement("p");
    p.textContent = message;
    errorBox.append(p);
    errorBox.hidden = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    submit.disabled = true;
    statusLine.textContent = "Tagging…";
    const text = textBox.value;
    try {
      const [{ body: predicted, requestId }, args] = await Promise.all([
        call("predict", { method: "POST", body: JSON.stringify({ texts: [{ text }], explain: true }) }),
        call("args/threshold", { method: "GET" }).then((answer) => answer.body).catch(() => null),
      ]);
      const threshold = args && args.data ? Number(args.data.threshold) : null;
      draw(predicted.data.predictions[0], threshold, predicted.data.model_version);
      offerCorrection(requestId, 0, text, predicted.data.predictions[0]);
      statusLine.textContent = `Tagged by model ${predicted.data.model_version}.`;
    } catch (error) {
      result.hidden = true;
      statusLine.textContent = "";
      showError(error.message);
    } finally {
      submit.disabled = false;
    }
  });

  const pct = (p) => `${(100 * p).toFixed(1)}%`;
  const signed = (x) => (x >= 0 ? "+" : "−") + Math.abs(x).toFixed(3);
  const REASONS = {
    stop_word: "a common word the model ignores",
    link: "a link, removed before the model reads the text",
    symbols: "punctuation or symbols, removed",
    not_ascii: "letters the model does not read",
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function draw(prediction, threshold, version) {
    const e = prediction.explanation;
    $("tag").textContent = prediction.predicted_tag;
    $("confidence").textContent = prediction.low_confidence
      ? `(the likeliest, ${e.tag}, has only ${pct(prediction.confidence)})`
      : `(${pct(prediction.confidence)})`;
    const note = $("note");
    note.hidden = !e.note;
    note.textContent = e.note || "";

    const bars = $("bars");
    bars.replaceChildren();
    const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
    for (const [tag, p] of ranked) {
      const row = el("li", tag === e.tag ? "bar top" : "bar");
      row.dataset.tag = tag;
      const track = el("div", "track");
      track.setAttribute("role", "img");
      track.setAttribute("aria-label", `${tag}: ${pct(p)}`);
      const fill = el("div", "fill");
      fill.style.width = pct(p);
      track.append(fill);
      if (threshold !== null) {
        const mark = el("div", "threshold-mark");
        mark.style.left = pct(threshold);
        mark.title = `threshold ${threshold}`;
        track.append(mark);
      }
      row.append(el("span", "label", tag), track, el("span", "value", pct(p)));
      bars.append(row);
    }
    $("threshold").textContent = threshold === null ? "(unknown)" : pct(threshold);

    $("explained-tag").textContent = e.tag;
    const words = $("words");
    words.replaceChildren();
    const chars = Array.from(prediction.input_text); // offsets count code points, as the service does
    const scale = Math.max(1e-12, ...e.words.map((w) => Math.abs(w.contribution)));
    let pos = 0;
    let first = true;
    for (const w of e.words) {
      if (w.start > pos) words.append(chars.slice(pos, w.start).join(""));
      const span = el("span", "word", w.text);
      span.dataset.contribution = String(w.contribution);
      span.tabIndex = -1;
      if (w.dropped) {
        span.classList.add("dropped");
        span.dataset.tip = `not read: ${REASONS[w.reason] || w.reason}`;
      } else {
        const side = w.contribution >= 0 ? "for" : "against";
        span.classList.add(side);
        const alpha = 0.08 + 0.62 * (Math.abs(w.contribution) / scale);
        span.style.backgroundColor = `rgba(var(--${side}), ${alpha.toFixed(3)})`;
        span.dataset.tip = `${signed(w.contribution)} to the ${e.tag} score`;
        if (first) {
          span.tabIndex = 0;
          first = false;
        }
      }
      span.setAttribute("aria-label", `${w.text}: ${span.dataset.tip}`);
      words.append(span);
      pos = w.end;
    }
    if (pos < chars.length) words.append(chars.slice(pos).join(""));
    if (first && words.firstElementChild) words.firstElementChild.tabIndex = 0;

    const total = e.words.reduce((s, w) => s + w.contribution, 0);
    $("sum").textContent = `Score for ${e.tag}: ${e.score.toFixed(3)} = intercept ${signed(e.intercept)} ` +
      `+ words ${signed(total)}. Model ${version}.`;

    for (const [id, features] of [["top-positive", e.top.positive], ["top-negative", e.top.negative]]) {
      const list = $(id);
      list.replaceChildren();
      for (const f of features) {
        const item = el("li");
        item.append(el("code", "", f.feature), ` ${f.kind === "word" ? "word" : "part of a word"} ${signed(f.contribution)}`);
        list.append(item);
      }
      if (!features.length) list.append(el("li", "muted", "none"));
    }
    result.hidden = false;
  }

  // "Wrong tag?": the right tag for the prediction shown goes to POST /feedback, naming the prediction
  // by the request id of its /predict answer and its index in that request (so it counts toward live
  // accuracy); when the service has no record of it (log off, or the row deleted), the text goes instead,
  // tagged by hand, so the correction can still be trained on
  const correctBox = $("correct-box");
  const correctTag = $("correct-tag");
  const correctSubmit = $("correct-submit");
  const correctStatus = $("correct-status");
  const correctError = $("correct-error");
  // the prediction log is written in the background, every half second: a correction sent sooner than
  // that finds no prediction yet, and is sent once more after this pause
  const LOG_DELAY_MS = 1000;
  let shown = null;

  function offerCorrection(requestId, index, text, prediction) {
    // byText: once the request id is known to be unknown, a change of mind replaces the text's correction
    // rather than adding a second one
    shown = { requestId, index, text, byText: !requestId };
    correctBox.hidden = false;
    correctBox.open = false;
    correctStatus.textContent = "";
    correctError.hidden = true;
    // the model's classes are the keys of its probabilities; likeliest first
    const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]).map(([tag]) => tag);
    correctTag.replaceChildren(new Option("Choose the right tag…", ""));
    for (const tag of ranked) {
      correctTag.append(new Option(tag === prediction.predicted_tag ? `${tag} (the model’s tag is right)` : tag, tag));
    }
  }

  function describeCorrection(status, body) {
    const said = quoted(body);
    if (status === 401) {
      return "Corrections need an API key. Open “API key” below the “Tag it” button, paste your key, and send " +
        "the correction again." + said;
    }
    if (status === 403) return "This service does not take corrections with this key." + said;
    if (status === 422) {
      const item = ((body && body.data && body.data.errors && body.data.errors.feedback) || {})[0] || {};
      const details = Object.values(item).flat().filter((m) => typeof m === "string");
      return "The service did not accept this correction." + said + (details.length ? ` ${details.join(" ")}` : "");
    }
    if (status === 429) return "Too many requests from this address; wait a moment and try again." + said;
    if (status === 503 || status === 504) return "The service is busy or its store is down; try again in a moment." + said;
    return `The service answered with an error (HTTP ${status}).` + said;
  }

  function showCorrectionError(message) {
    correctStatus.textContent = "";
    correctError.replaceChildren(el("p", "", message));
    correctError.hidden = false;
  }

  async function sendCorrection(item) {
    const { body } = await call("feedback", { method: "POST", body: JSON.stringify({ feedback: [item] }) },
      describeCorrection);
    return body.data.items[0];
  }

  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  $("correct-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!shown || correctSubmit.disabled) return;
    const tag = correctTag.value;
    if (!tag) {
      showCorrectionError("Choose the right tag first.");
      correctTag.focus();
      return;
    }
    correctError.hidden = true;
    correctSubmit.disabled = true;
    correctStatus.textContent = "Sending the correction…";
    try {
      let report = null;
      if (!shown.byText) {
        const item = { request_id: shown.requestId, index: shown.index, tag };
        report = await sendCorrection(item);
        if (report.status === "unknown_request") {
          await pause(LOG_DELAY_MS);
          report = await sendCorrection(item);
        }
      }
      const byText = !report || report.status === "unknown_request";
      if (byText) {
        shown.byText = true;
        report = await sendCorrection({ text: shown.text, tag });
      }
      if (report.status === "created" || report.status === "updated") {
        const verb = report.status === "created" ? "Recorded" : "Updated";
        let use;
        if (byText) {
          use = "The service has no record of this prediction (its prediction log is off, or the prediction " +
            "is too old), so it does not count toward the model’s live accuracy; the text with its right tag " +
            "can be trained on.";
        } else if (report.text_kept) {
          use = "It counts toward the model’s live accuracy, and the text with its right tag can be trained on.";
        } else {
          use = "It counts toward the model’s live accuracy (this service does not keep texts, so it will not be " +
            "trained on).";
        }
        const how = byText ? " as a hand-tagged text" : "";
        correctStatus.textContent = `${verb}${how}: the right tag is ${tag}. Thank you. ${use}`;
      } else {
        showCorrectionError(`The service did not record the correction (${report.status}).`);
      }
    } catch (error) {
      showCorrectionError(error.message);
    } finally {
      correctSubmit.disabled = false;
    }
  });

  // one tab stop for the words; arrow keys move between them (a roving tabindex)
  $("words").addEventListener("keydown", (event) => {
    const keys = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
    if (!(event.key in keys) && event.key !== "Home" && event.key !== "End") return;
    const all = Array.from($("words").querySelectorAll(".word"));
    const at = all.indexOf(document.activeElement);
    if (at < 0) return;
    event.preventDefault();
    let next = at + (keys[event.key] || 0);
    if (event.key === "Home") next = 0;
    if (event.key === "End") next = all.length - 1;
    next = Math.max(0, Math.min(all.length - 1, next));
    all[at].tabIndex = -1;
    all[next].tabIndex = 0;
    all[next].focus();
  });
})();
