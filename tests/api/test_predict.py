"""POST /predict: the lesson's contract, validation, limits and odd input."""

import json

import pytest

from tests.helpers import LESSON, check_envelope


def post(client, body, **kw):
    return client.post("/predict", json=body, **kw)


def test_lesson_example_verbatim(client, app):
    body = check_envelope(post(client, LESSON), 200, "POST")
    data = body["data"]
    assert data["model_version"] == app.extensions["tagifai"].service.model.version
    preds = data["predictions"]
    assert [p["predicted_tag"] for p in preds] == ["natural-language-processing", "computer-vision"]
    for item, p in zip(LESSON["texts"], preds):
        assert p["input_text"] == item["text"]
        assert set(p["probabilities"]) == {"computer-vision", "mlops", "natural-language-processing", "other"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0)
        assert p["confidence"] == max(p["probabilities"].values())
        assert p["low_confidence"] is False


def test_order_is_kept_for_many_texts(client):
    texts = [f"{i} " + ("YOLO object detection" if i % 2 else "BERT question answering") for i in range(100)]
    preds = post(client, {"texts": [{"text": t} for t in texts]}).get_json()["data"]["predictions"]
    assert [p["input_text"] for p in preds] == texts
    assert [p["predicted_tag"] for p in preds] == [
        "computer-vision" if i % 2 else "natural-language-processing" for i in range(100)
    ]


@pytest.mark.parametrize(
    "text",
    ["😀🚀 deep learning", "تصنيف النصوص باستخدام المحولات", "e\u0301 combining", "\u202eRTL override", "中文文本分类", "!!!"],
)
def test_unicode_is_accepted_and_echoed_exactly(client, text):
    response = client.post("/predict", data=json.dumps({"texts": [{"text": text}]}, ensure_ascii=False).encode(),
                           content_type="application/json; charset=utf-8")
    body = check_envelope(response, 200, "POST")
    assert body["data"]["predictions"][0]["input_text"] == text


def test_low_confidence_falls_back_to_other(make_app):
    client = make_app().test_client()
    app = client.application
    threshold = app.extensions["tagifai"].service.model.args["threshold"]
    preds = post(client, {"texts": [{"text": "hello"}, {"text": "zzzz qqqq"}]}).get_json()["data"]["predictions"]
    for p in preds:
        assert p["low_confidence"] == (p["confidence"] < threshold)
        if p["low_confidence"]:
            assert p["predicted_tag"] == "other"


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({}, {"texts": ["Missing data for required field."]}),
        ({"texts": "abc"}, {"texts": ["Not a valid list."]}),
        ({"texts": []}, {"texts": ["Length must be between 1 and 100."]}),
        ({"texts": [{}]}, {"texts": {"0": {"text": ["Missing data for required field."]}}}),
        ({"texts": [{"text": 5}]}, {"texts": {"0": {"text": ["Not a valid string."]}}}),
        ({"texts": [{"text": ""}]}, {"texts": {"0": {"text": ["Text must not be empty or only whitespace."]}}}),
        ({"texts": [{"text": " \n\t"}]}, {"texts": {"0": {"text": ["Text must not be empty or only whitespace."]}}}),
        ({"texts": [{"text": "ok"}, {"text": "ok", "extra": 1}]}, {"texts": {"1": {"extra": ["Unknown field."]}}}),
        ({"texts": [{"text": "ok"}], "model": "x"}, {"model": ["Unknown field."]}),
        ([{"text": "ok"}], {"_schema": ["Invalid input type."]}),
        ("just a string", {"_schema": ["Invalid input type."]}),
    ],
)
def test_invalid_bodies_are_422_with_field_paths(client, body, errors):
    result = check_envelope(post(client, body), 422, "POST")
    assert result["data"]["errors"] == errors


def test_text_length_and_count_limits(make_app):
    client = make_app(MAX_TEXTS=3, MAX_TEXT_LENGTH=20).test_client()
    too_long = check_envelope(post(client, {"texts": [{"text": "x" * 21}]}), 422, "POST")
    assert too_long["data"]["errors"] == {"texts": {"0": {"text": ["Longer than maximum length 20."]}}}
    assert post(client, {"texts": [{"text": "x" * 20}]}).status_code == 200
    too_many = check_envelope(post(client, {"texts": [{"text": "a"}] * 4}), 422, "POST")
    assert too_many["data"]["errors"] == {"texts": ["Length must be between 1 and 3."]}


def test_default_limits(client):
    # 10,000 characters whose only telling words are at the very end: an answer from a shortened
    # text would be 'other', as the filler alone is
    tail = " YOLO object detection in images with convolutional networks."
    longest = ("x " * 5_000)[: 10_000 - len(tail)] + tail
    assert len(longest) == 10_000
    (prediction,) = check_envelope(post(client, {"texts": [{"text": longest}]}), 200, "POST")["data"]["predictions"]
    assert prediction["input_text"] == longest
    assert prediction["predicted_tag"] == "computer-vision" and prediction["low_confidence"] is False
    (filler,) = post(client, {"texts": [{"text": "x " * 5_000}]}).get_json()["data"]["predictions"]
    assert filler["predicted_tag"] == "other"
    too_long = check_envelope(post(client, {"texts": [{"text": "x" * 10_001}]}), 422, "POST")
    assert too_long["data"]["errors"] == {"texts": {"0": {"text": ["Longer than maximum length 10000."]}}}
    too_many = check_envelope(post(client, {"texts": [{"text": "a"}] * 101}), 422, "POST")
    assert too_many["data"]["errors"] == {"texts": ["Length must be between 1 and 100."]}


def test_cache_hits_give_identical_answers(make_app):
    client = make_app(CACHE_SIZE=100).test_client()
    first = post(client, LESSON).get_json()["data"]["predictions"]
    second = post(client, LESSON).get_json()["data"]["predictions"]
    assert first == second
    assert client.application.extensions["tagifai"].service.cache.hits == 2
