import pytest

from tagifai_api.ml.text import clean_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("BERT-based NER (2020).", "bert based ner 2020"),
        ("see https://example.com/x?y=1 and www.foo.org now", "see and now"),
        ("  many\t\nspaces   here ", "many spaces here"),
        ("naïve café 😀 مرحبا", "na ve caf"),
        ("", ""),
        ("!!! ???", ""),
    ],
)
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected


def test_clean_text_drops_stopwords():
    assert clean_text("The model of the year", frozenset({"the", "of"})) == "model year"
