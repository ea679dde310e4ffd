import json

import numpy as np

from tagifai_api.ml import train as training


def test_training_is_deterministic(dataset, train_args, trained):
    again = training.train(dataset, train_args)
    assert json.dumps(again.performance, sort_keys=True) == json.dumps(trained.performance, sort_keys=True)
    texts = ["transformers for text", "object detection", "feature store"]
    assert np.array_equal(again.pipeline.predict_proba(texts), trained.pipeline.predict_proba(texts))
    assert again.profile == trained.profile


def test_args_record_the_threshold(trained, train_args):
    assert 0.0 <= trained.args["threshold"] <= max(train_args["threshold_grid"])
    assert {k: v for k, v in trained.args.items() if k != "threshold"} == train_args


def test_performance_shape(trained):
    perf = trained.performance
    assert set(perf) == {"overall", "class", "slices"}
    assert set(perf["class"]) == set(trained.labels)
    assert {"short_text", "nlp_cnn"} <= set(perf["slices"])
    assert perf["overall"]["num_samples"] > 100


def test_apply_threshold():
    proba = np.array([[0.9, 0.1], [0.55, 0.45]])
    assert training.apply_threshold(proba, ["a", "b"], 0.6) == ["a", "other"]
    assert training.apply_threshold(proba, ["a", "b"], 0.0) == ["a", "a"]


def test_choose_threshold_never_costs_f1():
    proba = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.45, 0.1, 0.45]])
    classes = ["a", "b", "other"]
    y_true = ["a", "a", "b", "other"]
    t = training.choose_threshold(proba, classes, y_true, [0.0, 0.3, 0.48, 0.6, 0.95])
    # 0.6 still scores above no threshold (weighted F1 0.75 vs 0.65); 0.95 sends nearly everything to other
    assert t == 0.6


def test_unknown_classifier_is_refused(train_args):
    import pytest

    with pytest.raises(ValueError, match="unknown classifier"):
        training.build_pipeline({**train_args, "classifier": "tree"})


def test_extra_texts_replace_the_dataset_projects_with_their_text_and_never_touch_the_test_split(dataset, train_args,
                                                                                                trained):
    import pandas as pd

    from tagifai_api.ml.text import text_key

    train_df, val_df, test_df = training.splits(dataset, train_args)
    relabelled = train_df.iloc[0]
    same = val_df.iloc[0]
    tested = test_df.iloc[0]
    flipped = "other" if relabelled["tag"] != "other" else "mlops"
    extra = pd.DataFrame({
        "text": [relabelled["text"].upper() + "  ", same["text"], tested["text"], "Serving models with Kubeflow."],
        "tag": [flipped, same["tag"], "mlops", "mlops"]})
    withheld = train_df.iloc[1]
    result = training.train(dataset, train_args, extra=extra, withhold={text_key(withheld["text"])})
    assert result.rows == {"extra_in_test": 1, "extra_used": 3, "dataset_replaced": 1, "dataset_duplicates": 1,
                           "dataset_withheld": 1, "dataset_fitted": len(train_df) + len(val_df) - 3,
                           "test": len(test_df)}
    # the fixed test split: the same projects and tags as a plain run's
    def supports(performance):
        return {tag: scores["num_samples"] for tag, scores in performance["class"].items()}

    assert supports(result.performance) == supports(trained.performance)
