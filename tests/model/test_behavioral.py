"""Behavioural tests of the model the project trains: invariance, directionality, minimum functionality.

The model is built here (the session's ``artifacts_dir``: data/dataset.csv with config/args.json,
trained into a temporary folder), never read from ``artifacts/``, whose contents depend on the machine.
"""

import pytest

from tagifai_api.ml.predict import Predictor
from tests.helpers import load_default


@pytest.fixture(scope="module")
def predictor(artifacts_dir):
    """The model trained by this test session from the shipped data and arguments."""
    return Predictor(load_default(artifacts_dir))


def tags(predictor, texts):
    return [p["predicted_tag"] for p in predictor.predict(texts)]


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("Transformers applied to {} text classification.", ["fast", "quick", "simple"]),
        ("A {} convolutional network for image segmentation.", ["new", "novel", "small"]),
        ("{} model monitoring and deployment pipelines in production.", ["Reliable", "Robust", "Easy"]),
    ],
)
def test_invariance(predictor, template, words):
    assert len(set(tags(predictor, [template.format(w) for w in words]))) == 1


@pytest.mark.parametrize(
    ("template", "before", "before_tag", "after", "after_tag"),
    [
        ("An open-source library for {}.", "image segmentation", "computer-vision",
         "text classification", "natural-language-processing"),
        ("An open-source library for {}.", "text classification", "natural-language-processing",
         "model deployment and monitoring", "mlops"),
        ("Fine-tuning a pretrained model on {} data.", "image", "computer-vision", "text", "natural-language-processing"),
        ("Training a network to classify {}.", "images", "computer-vision", "sentences", "natural-language-processing"),
        ("{} with a small neural network.", "Object detection", "computer-vision",
         "Sentiment analysis", "natural-language-processing"),
    ],
)
def test_directionality(predictor, template, before, before_tag, after, after_tag):
    """Swapping the words that carry a domain moves the tag to the new domain, and that domain's
    probability up, in an otherwise identical sentence."""
    old, new = predictor.predict([template.format(before), template.format(after)])
    assert (old["predicted_tag"], new["predicted_tag"]) == (before_tag, after_tag)
    assert new["probabilities"][after_tag] > old["probabilities"][after_tag]
    assert new["probabilities"][before_tag] < old["probabilities"][before_tag]


@pytest.mark.parametrize(
    ("text", "tag"),
    [("image classification", "computer-vision"), ("sentiment analysis", "natural-language-processing"),
     ("object detection", "computer-vision"), ("text summarization", "natural-language-processing"),
     pytest.param("machine translation", "natural-language-processing", marks=pytest.mark.xfail(
         strict=True, reason="known weakness: 'machine' pulls short texts towards mlops in this data"))],
)
def test_minimum_functionality_on_short_inputs(predictor, text, tag):
    assert tags(predictor, [text]) == [tag]


def test_nonsense_is_not_confident(predictor):
    result = predictor.predict(["qwxz vbnm plok"])[0]
    assert result["confidence"] < 0.9
