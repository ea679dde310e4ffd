"""The numpy fast path must give the fitted scikit-learn pipeline's answers."""

import numpy as np
import pytest

from tagifai_api.ml import data
from tagifai_api.ml.compiled import CompiledModel

ODD = [
    "",
    "!!! ??? ...",
    "a",
    "ab",
    "x y z",
    "😀🚀 emoji only",
    "مرحبا بالعالم تصنيف النصوص",
    "e\u0301\u0301 combining marks",
    "ＦＵＬＬＷＩＤＴＨ text",
    "word " * 2500,
    "supercalifragilisticexpialidocious " * 3,
]


@pytest.fixture(scope="module")
def texts(dataset):
    return [data.join_text(t, d) for t, d in zip(dataset["title"], dataset["description"])] + ODD


def test_fast_path_matches_pipeline(trained, texts):
    compiled = trained.compiled
    cleaned = [compiled.clean(t) for t in texts]
    expected = trained.pipeline.predict_proba(cleaned)
    got = compiled.predict_proba(cleaned)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-9
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_served_tags_are_the_pipelines_with_the_threshold(trained, texts, tmp_path):
    """The tags as served (low-confidence rule included) equal the pipeline's, text for text."""
    from tagifai_api.ml import artifacts
    from tagifai_api.ml import train as training
    from tagifai_api.ml.predict import Predictor

    saved = artifacts.save(tmp_path, trained, "0" * 64)
    predictor = Predictor(artifacts.load(tmp_path, saved.version))
    cleaned = [predictor.clean(t) for t in texts]
    expected = training.apply_threshold(trained.pipeline.predict_proba(cleaned), list(trained.pipeline.classes_),
                                        trained.args["threshold"])
    assert [p["predicted_tag"] for p in predictor.predict(texts)] == expected


def test_one_text_at_a_time_matches_batch(trained, texts):
    compiled = trained.compiled
    cleaned = [compiled.clean(t) for t in texts[:50] + ODD]
    batch = compiled.predict_proba(cleaned)
    single = np.vstack([compiled.predict_proba([c]) for c in cleaned])
    assert np.abs(batch - single).max() < 1e-12


def test_save_load_round_trip(tmp_path, trained, texts):
    trained.compiled.save(tmp_path / "m.npz")
    loaded = CompiledModel.load(tmp_path / "m.npz")
    cleaned = [loaded.clean(t) for t in texts]
    assert np.array_equal(loaded.predict_proba(cleaned), trained.compiled.predict_proba(cleaned))
    assert loaded.classes == trained.compiled.classes


def test_logistic_regression_compiles_too(dataset, train_args):
    from tagifai_api.ml import train as training

    args = {**train_args, "classifier": "logreg", "C": 5.0, "max_iter": 2000}
    df = data.prepare(dataset, args["accepted_tags"], args["min_tag_freq"])
    pipeline = training.build_pipeline(args).fit(df["clean"], df["tag"])
    compiled = CompiledModel.from_pipeline(pipeline)
    cleaned = list(df["clean"][:200]) + [compiled.clean(t) for t in ODD]
    assert np.abs(compiled.predict_proba(cleaned) - pipeline.predict_proba(cleaned)).max() < 1e-9


def test_word_cache_is_bounded(trained, monkeypatch):
    from tagifai_api.ml import compiled as module

    monkeypatch.setattr(module, "_WORD_CACHE_LIMIT", 10)
    c = trained.compiled
    c._word_ids.clear()
    c.predict_proba([" ".join(f"w{i}" for i in range(50))])
    assert len(c._word_ids) <= 10


@pytest.mark.parametrize("features", [
    [{"analyzer": "char_wb", "ngram_min": 2, "ngram_max": 4, "sublinear_tf": True}],
    [{"analyzer": "word", "ngram_min": 1, "ngram_max": 1}],
    [{"analyzer": "word", "ngram_min": 1, "ngram_max": 1, "sublinear_tf": True},
     {"analyzer": "char_wb", "ngram_min": 3, "ngram_max": 5}],
], ids=["char-only", "word-only", "mixed-sublinear"])
def test_other_feature_sets_match_one_text_at_a_time_and_in_batches(dataset, train_args, features):
    """One block or several, sublinear or not: the one-text path and the batch path both give the pipeline's answers."""
    from tagifai_api.ml import train as training

    args = {**train_args, "features": features}
    df = data.prepare(dataset, args["accepted_tags"], args["min_tag_freq"])
    pipeline = training.build_pipeline(args).fit(df["clean"], df["tag"])
    compiled = CompiledModel.from_pipeline(pipeline)
    cleaned = list(df["clean"][:120]) + [compiled.clean(t) for t in ODD]
    expected = pipeline.predict_proba(cleaned)
    assert np.abs(compiled.predict_proba(cleaned) - expected).max() < 1e-9
    single = np.vstack([compiled.predict_proba([c]) for c in cleaned])
    assert np.abs(single - expected).max() < 1e-9
    counts: list = []
    compiled.predict_proba(cleaned, counts)
    assert counts == [compiled.token_stats(c) for c in cleaned]


def test_word_counts_made_on_the_way_are_token_stats(trained, texts):
    """The counts a prediction brings for the log equal a second pass's, in a batch and one at a time."""
    compiled = trained.compiled
    cleaned = [compiled.clean(t) for t in texts] + ["", "a b", "transformers transformers qqqzzz"]
    counts: list = []
    compiled.predict_proba(cleaned, counts)
    expected = [compiled.token_stats(c) for c in cleaned]
    assert counts == expected
    assert any(unknown for _, unknown in expected) and any(tokens > unknown for tokens, unknown in expected)
    for c, want in zip(cleaned[-20:], expected[-20:]):
        one: list = []
        compiled.predict_proba([c], one)
        assert one == [want]
