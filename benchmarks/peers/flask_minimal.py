"""The minimal Flask app a user would write first: the scikit-learn pipeline called per request.

It loads the same default model version as the service (``BENCH_ARTIFACTS_DIR``), cleans
texts the same way and answers with the same tags, without envelope, validation or metrics.
"""

from flask import Flask, jsonify, request

from benchmarks.peers.sklearn_tags import classes, predict_proba

app = Flask(__name__)


@app.post("/predict")
def predict():
    texts = [item["text"] for item in request.get_json()["texts"]]
    proba = predict_proba(texts)
    return jsonify({"predictions": [
        {"input_text": t, "predicted_tag": classes[row.argmax()], "probabilities": dict(zip(classes, row.tolist()))}
        for t, row in zip(texts, proba)
    ]})


@app.get("/health/ready")
def ready():
    return "ok"
