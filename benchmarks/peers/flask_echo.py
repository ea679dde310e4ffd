"""A bare Flask JSON echo: the framework's own ceiling on this machine (no model, no validation)."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/predict")
def predict():
    return jsonify(request.get_json())


@app.get("/health/ready")
def ready():
    return "ok"
