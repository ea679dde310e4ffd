import pytest

from tagifai_api.ml import evaluate


def test_evaluate_shape_and_values():
    texts = ["cnn text classification", "image segmentation model", "one two three four five six seven eight nine"]
    y_true = ["natural-language-processing", "computer-vision", "mlops"]
    y_pred = ["computer-vision", "computer-vision", "mlops"]
    labels = ["computer-vision", "mlops", "natural-language-processing", "other"]
    report = evaluate.evaluate(texts, y_true, y_pred, labels)
    assert set(report) == {"overall", "class", "slices"}
    assert report["overall"]["num_samples"] == 3
    assert report["overall"]["recall"] == pytest.approx(2 / 3, abs=1e-6)
    assert set(report["class"]) == set(labels)
    assert report["class"]["computer-vision"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3, abs=1e-6),
                                                  "num_samples": 1}
    assert report["slices"]["nlp_cnn"]["num_samples"] == 1
    assert report["slices"]["nlp_cnn"]["f1"] == 0.0
    assert report["slices"]["short_text"]["num_samples"] == 2


def test_empty_slice_is_zero_not_an_error():
    report = evaluate.slice_metrics(["a"], ["a"], mask=__import__("numpy").array([False]))
    assert report == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "num_samples": 0}
