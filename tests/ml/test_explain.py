"""Explanations are exact: they add up to the score, the score is scikit-learn's, and every word is placed."""

import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagifai_api.ml import data
from tagifai_api.ml.explain import AlignmentError, Explainer, align
from tagifai_api.ml.text import clean_text

ODD = [
    "",
    "   \n\t ",
    "!!! ??? ...",
    "the and of with for",  # only stop words
    "The the THE",
    "a",
    "x y z",
    "nlp nlp nlp nlp",  # one word, repeated
    "learning deep learning, deep LEARNING!",
    "😀🚀 emoji only",
    "مرحبا بالعالم تصنيف النصوص",
    "中文文本分类 with BERT",
    "e\u0301\u0301 combining marks",
    "ＦＵＬＬＷＩＤＴＨ text",
    "İstanbul İİ traffic İmage detection",  # U+0130 lower-cases to two characters
    "\u212aelvin sign and ﬁ ligature",  # K (U+212A) lower-cases to ASCII k
    "see https://example.com/a,b and www.example.org/x?y=1 or foohttp://bar.io end",
    "HTTPS://UPPER.CASE/LINK next",
    "snake_case_words and state-of-the-art (BERT), TensorFlow/PyTorch",
    "café naïve résumé",
    "\u202eRTL override",
    "word " * 2000,  # 10,000 characters
    ("Transfer learning with transformers for text classification. " * 160)[:10_000],
]


@pytest.fixture(scope="module")
def texts(dataset):
    return [data.join_text(t, d) for t, d in zip(dataset["title"].fillna(""), dataset["description"].fillna(""))] + ODD


@pytest.fixture(scope="module")
def explainer(trained):
    return Explainer(trained.compiled)


def reference_contributions(pipeline, cleaned: str, tag_index: int) -> dict[str, float]:
    """Each cleaned word's contribution, from scikit-learn's own analyzers and transform.

    A feature's contribution ``X[f] * coef[c, f]`` is shared among the words that produce it by
    occurrence count, as the explainer documents; nothing of the compiled model is used here.
    """
    union = pipeline.named_steps["tfidf"]
    coef = pipeline.named_steps["clf"].coef_[tag_index]
    x = union.transform([cleaned]).toarray()[0]
    words = cleaned.split()
    per_word_counts = [Counter() for _ in words]
    offset = 0
    for _, vec in union.transformer_list:
        analyze = vec.build_analyzer()
        for k, word in enumerate(words):
            for gram in analyze(word):
                if gram in vec.vocabulary_:
                    per_word_counts[k][offset + vec.vocabulary_[gram]] += 1
        offset += len(vec.vocabulary_)
    totals = sum(per_word_counts, Counter())
    return [sum(x[f] * coef[f] * n / totals[f] for f, n in counts.items()) for counts in per_word_counts]


def test_every_text_is_explained_exactly(trained, explainer, texts):
    """intercept + sum(words) == score == scikit-learn's decision_function, for the top class."""
    compiled, pipeline = trained.compiled, trained.pipeline
    cleaned = [compiled.clean(t) for t in texts]
    decision = pipeline.decision_function(cleaned)
    for text, row in zip(texts, decision):
        e = explainer.explain(text)
        c = compiled.classes.index(e["tag"])
        assert c == int(np.argmax(row)), text
        assert e["intercept"] + sum(w["contribution"] for w in e["words"]) == pytest.approx(e["score"], abs=1e-9)
        assert e["score"] == pytest.approx(row[c], abs=1e-9), text
        assert e["intercept"] == pipeline.named_steps["clf"].intercept_[c]


def test_every_class_can_be_explained_exactly(trained, explainer, texts):
    decision = trained.pipeline.decision_function([trained.compiled.clean(t) for t in texts[:100]])
    for text, row in zip(texts[:100], decision):
        for c in range(len(row)):
            e = explainer.explain(text, tag_index=c)
            assert e["score"] == pytest.approx(row[c], abs=1e-9)
            assert e["intercept"] + sum(w["contribution"] for w in e["words"]) == pytest.approx(row[c], abs=1e-9)


def test_word_contributions_match_scikit_learns_features_shared_by_count(trained, explainer, texts):
    """Each word's contribution, recomputed from scikit-learn's analyzers and transform."""
    compiled = trained.compiled
    for text in texts[::7] + ODD:
        e = explainer.explain(text)
        c = compiled.classes.index(e["tag"])
        cleaned = compiled.clean(text)
        expected = reference_contributions(trained.pipeline, cleaned, c)
        kept = [w for w in e["words"] if not w["dropped"]]
        # each kept piece holds one or more consecutive cleaned words (e.g. "café" holds "caf")
        pieces_words = [clean_text(w["text"], compiled.stopwords).split() for w in kept]
        assert [x for ws in pieces_words for x in ws] == cleaned.split(), text
        pos = 0
        for piece, ws in zip(kept, pieces_words):
            assert piece["contribution"] == pytest.approx(sum(expected[pos:pos + len(ws)]), abs=1e-9), (text, piece)
            pos += len(ws)


def test_words_cover_the_original_text(explainer, texts):
    """Pieces are in order, never overlap, and cover every character but whitespace."""
    for text in texts:
        words = explainer.explain(text)["words"]
        covered = [False] * len(text)
        last_end = 0
        for w in words:
            assert last_end <= w["start"] < w["end"] <= len(text)
            assert text[w["start"]:w["end"]] == w["text"]
            covered[w["start"]:w["end"]] = [True] * (w["end"] - w["start"])
            last_end = w["end"]
            if w["dropped"]:
                assert w["contribution"] == 0.0 and w["reason"] in {"stop_word", "link", "symbols", "not_ascii"}
            else:
                assert "reason" not in w
        assert all(c or ch.isspace() for c, ch in zip(covered, text)), text


def by_text(explanation):
    return [(w["text"], w["dropped"], w.get("reason")) for w in explanation["words"]]


def test_dropped_words_say_why(explainer):
    e = explainer.explain("See https://github.com/x/y, the BERT repo! 模型 😀")
    assert by_text(e) == [
        ("See", True, "stop_word"), ("https://github.com/x/y,", True, "link"), ("the", True, "stop_word"),
        ("BERT", False, None), ("repo", False, None), ("!", True, "symbols"), ("模型", True, "not_ascii"),
        ("😀", True, "symbols"),
    ]


def test_empty_after_cleaning_is_the_intercept(trained, explainer):
    for text in ["", "!!!", "the of and", "模型 😀", "https://example.com"]:
        e = explainer.explain(text)
        c = trained.compiled.classes.index(e["tag"])
        assert e["score"] == e["intercept"] == trained.compiled.intercept[c]
        assert all(w["dropped"] and w["contribution"] == 0.0 for w in e["words"])
        assert e["top"] == {"positive": [], "negative": []}


def test_repeated_word_shares_equally(explainer):
    e = explainer.explain("nlp NLP nlp, Nlp")
    kept = [w["contribution"] for w in e["words"] if not w["dropped"]]
    assert len(kept) == 4 and max(kept) - min(kept) < 1e-12
    assert sum(kept) + e["intercept"] == pytest.approx(e["score"], abs=1e-12)


def test_spans_survive_characters_whose_lower_case_is_longer(explainer):
    text = "İİ İmage detection"
    words = explainer.explain(text)["words"]
    assert [(w["text"], w["start"], w["end"]) for w in words] == [
        ("İİ", 0, 2), ("İmage", 3, 8), ("detection", 9, 18)]
    assert not words[1]["dropped"] and not words[2]["dropped"]


def test_top_features_are_the_largest_contributions(trained, explainer):
    e = explainer.explain("Transfer learning with transformers for text classification.")
    pos, neg = e["top"]["positive"], e["top"]["negative"]
    assert pos and all(f["contribution"] > 0 for f in pos) and all(f["contribution"] < 0 for f in neg)
    assert [f["contribution"] for f in pos] == sorted((f["contribution"] for f in pos), reverse=True)
    assert [f["contribution"] for f in neg] == sorted(f["contribution"] for f in neg)
    assert {f["kind"] for f in pos + neg} <= {"word", "char_wb"}
    union = trained.pipeline.named_steps["tfidf"]
    x = union.transform([trained.compiled.clean("Transfer learning with transformers for text classification.")])
    names = list(union.get_feature_names_out())
    c = trained.compiled.classes.index(e["tag"])
    coef = trained.pipeline.named_steps["clf"].coef_[c]
    contributions = {names[f]: x[0, f] * coef[f] for f in x.nonzero()[1]}
    for f in pos + neg:
        prefix = "char_wb_0__" if f["kind"] == "char_wb" else "word_1__"
        assert contributions[prefix + f["feature"]] == pytest.approx(f["contribution"], abs=1e-12)
    assert pos[0]["contribution"] == pytest.approx(max(contributions.values()), abs=1e-12)


_FRAGMENTS = ["http://", "https://a.b/", "www.", " ", "  ", "\n", ".", ",", "-", "_", "İ", "\u212a", "é", "模",
              "😀", "the", "and", "BERT", "nlp", "x", "Ab1", "0", "/", "\u0301"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=4)), max_size=25).map("".join))
def test_alignment_agrees_with_the_cleaning_on_any_text(text):
    stopwords = data.STOPWORDS
    al = align(text, stopwords)
    assert al.words == clean_text(text, stopwords).split()
    for k, word in zip(al.piece_of_word, al.words):
        piece = text[al.starts[k]:al.ends[k]]
        assert word in re.sub(r"[^a-z0-9]+", " ", piece.lower()).split()


def test_a_cleaning_the_alignment_does_not_know_is_caught(monkeypatch):
    from tagifai_api.ml import explain

    monkeypatch.setattr(explain, "clean_text", lambda text, stopwords: "something else")
    with pytest.raises(AlignmentError):
        align("a text", frozenset())


def test_served_explanations_agree_with_plain_predictions_on_every_text(trained, texts, tmp_path):
    """Predictor.explain (what /predict serves) in batches of 100: the plain answer, plus an exact explanation."""
    from tagifai_api.ml import artifacts
    from tagifai_api.ml.predict import Predictor

    saved = artifacts.save(tmp_path, trained, "0" * 64)
    predictor = Predictor(artifacts.load(tmp_path, saved.version))
    decision = trained.pipeline.decision_function([trained.compiled.clean(t) for t in texts])
    for start in range(0, len(texts), 100):
        batch = texts[start:start + 100]
        for plain, explained, row in zip(predictor.predict(batch), predictor.explain(batch), decision[start:]):
            assert explained["predicted_tag"] == plain["predicted_tag"]
            assert explained["low_confidence"] == plain["low_confidence"]
            for tag, p in plain["probabilities"].items():
                assert explained["probabilities"][tag] == pytest.approx(p, abs=1e-12)
            e = explained["explanation"]
            c = predictor.classes.index(e["tag"])
            assert e["tag"] == max(plain["probabilities"], key=plain["probabilities"].get)
            assert e["score"] == pytest.approx(row[c], abs=1e-9)
            assert e["intercept"] + sum(w["contribution"] for w in e["words"]) == pytest.approx(e["score"], abs=1e-9)
            assert ("note" in e) is plain["low_confidence"]
