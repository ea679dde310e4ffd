"""Behavioural tests of the shipped default model: invariance, directionality, minimum functionality."""

import pytest

from tagifai_api import settings
from tagifai_api.ml import artifacts
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.ml.predict import Predictor


@pytest.fixture(scope="module")
def predictor(artifacts_dir):
    """The default model of the repository when `make model` built one, else the session's."""
    try:
        return Predictor(artifacts.load(settings.ROOT / "artifacts"))
    except ArtifactError:
        return Predictor(artifacts.load(artifacts_dir))


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
    ("text", "tag"),
    [
        ("Transfer learning with transformers for text classification.", "natural-language-processing"),
        ("Generative adversarial networks for image generation.", "computer-vision"),
        ("Object detection and segmentation of images with YOLO.", "computer-vision"),
        ("Named entity recognition and machine translation with BERT.", "natural-language-processing"),
        ("Serving, monitoring and deploying models in production with Kubernetes.", "mlops"),
    ],
)
def test_directionality(predictor, text, tag):
    assert tags(predictor, [text]) == [tag]


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
