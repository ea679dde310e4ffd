"""Generated input: whatever a client sends, the answer is an envelope with a deliberate status,
never a 500 from a crash, and the app keeps serving."""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import check_envelope

# any JSON value, with keys and strings that look like the real ones often enough to get past the outer checks
json_text = st.one_of(st.text(max_size=50), st.sampled_from(["", " ", "\u200b", "text", "texts", "\x00"]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | json_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(json_text, children, max_size=5),
    max_leaves=20,
)
items = st.one_of(json_values, st.fixed_dictionaries({"text": json_values}, optional={"x": json_values}))
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"texts": json_values}),
    st.fixed_dictionaries({"texts": st.lists(items, max_size=5)}, optional={"extra": json_values}),
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_client(artifacts_dir, tmp_path_factory):
    from tagifai_api import create_app

    state = tmp_path_factory.mktemp("fuzz-state")
    shutil.copy(artifacts_dir / "state.db", state / "state.db")  # a private copy of the session's store
    app = create_app({"ARTIFACTS_DIR": str(artifacts_dir), "DATABASE_URL": f"sqlite:///{state / 'state.db'}",
                      "API_KEYS_FILE": str(state / "no-old-keys-file.json"), "LOG_LEVEL": "WARNING", "MAX_TEXTS": 4,
                      "MAX_TEXT_LENGTH": 40, "METRICS": False})
    yield app.test_client()
    app.extensions["tagifai"].close()
    app.extensions["tagifai_auth"].ring.close()
    app.extensions["tagifai"].service.registry.store.close()


@FUZZ
@given(body=bodies)
def test_any_json_body_gets_a_deliberate_answer(fuzz_client, body):
    response = fuzz_client.post("/predict", data=json.dumps(body), content_type="application/json")
    envelope = check_envelope(response, response.status_code, "POST")
    assert response.status_code in (200, 422), envelope
    if response.status_code == 422:
        assert envelope["data"]["errors"]
    else:
        predictions = envelope["data"]["predictions"]
        assert [p["input_text"] for p in predictions] == [item["text"] for item in body["texts"]]


@FUZZ
@given(raw=st.binary(max_size=200), content_type=st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/x-www-form-urlencoded"]))
def test_any_bytes_get_a_deliberate_answer(fuzz_client, raw, content_type):
    response = fuzz_client.post("/predict", data=raw, content_type=content_type)
    check_envelope(response, response.status_code, "POST")
    assert response.status_code in (200, 400, 415, 422)


def test_still_serving_after_the_fuzzing(fuzz_client):
    response = fuzz_client.post("/predict", json={"texts": [{"text": "Object detection in images."}]})
    assert check_envelope(response, 200, "POST")["data"]["predictions"][0]["predicted_tag"] == "computer-vision"


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 5000 + b"]" * 5000,  # deeper than any parser should follow
        b'{"texts": [{"text": "\\ud800 lone surrogate"}]}',
        b'{"texts": [{"text": "ok", "\\udc00": 1}]}',
        b'{"texts": [{"text": "\xed\xa0\x80"}]}',  # a surrogate in raw UTF-8
        b'{"texts": [{"text": "\xff\xfe"}]}',  # not UTF-8 at all
    ],
)
def test_malformed_json_is_400_not_a_crash(fuzz_client, raw):
    response = fuzz_client.post("/predict", data=raw, content_type="application/json")
    check_envelope(response, 400, "POST")


class BrokenStream:
    """A request body that fails while it is read, as a bad chunked body does in the server."""

    def read(self, *args):
        raise ValueError("Invalid chunk size")

    readline = read


def test_a_body_the_server_cannot_read_is_400(fuzz_client):
    response = fuzz_client.post("/predict", data=b'{"texts": []}', content_type="application/json",
                                environ_overrides={"wsgi.input": BrokenStream()})
    check_envelope(response, 400, "POST")
    test_still_serving_after_the_fuzzing(fuzz_client)
