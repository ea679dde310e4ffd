"""The minimal Flask app a user would write first: the scikit-learn pipeline called per request.

It loads the same default model version as the service (``TAGIFAI_ARTIFACTS_DIR``), cleans
texts the same way and answers with the same tags, without envelope, validation or metrics.
"""

import os
from pathlib import Path

from flask import Flask, jsonify, request

from tagifai_api.ml import artifacts

_version = artifacts.load(Path(os.environ.get("BENCH_ARTIFACTS_DIR", "artifacts")))
_pipeline = artifacts.load_pipeline(_version)
_clean = _version.compiled.clean
_classes = list(_pipeline.classes_)

app = Flask(__name__)


@app.post("/predict")
def predict():
    texts = [item["text"] for item in request.get_json()["texts"]]
    proba = _pipeline.predict_proba([_clean(t) for t in texts])
    return jsonify({"predictions": [
        {"input_text": t, "predicted_tag": _classes[row.argmax()], "probabilities": dict(zip(_classes, row.tolist()))}
        for t, row in zip(texts, proba)
    ]})


@app.get("/health/ready")
def ready():
    return "ok"
