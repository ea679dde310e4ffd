"""The scikit-learn pipeline the peers serve: the service's default model version, loaded once.

``BENCH_ARTIFACTS_DIR`` names the model directory and ``BENCH_MODEL_VERSION`` the version the
state store records as the default (the bench sets both; without the second, the store is asked).
Texts are cleaned as the service cleans them, and :func:`predict_tags` applies the version's
low-confidence rule, so the peers answer with the service's tags.
"""

import os
from pathlib import Path

from tagifai_api.ml import artifacts
from tagifai_api.ml.predict import OTHER

_root = Path(os.environ.get("BENCH_ARTIFACTS_DIR", "artifacts"))
if os.environ.get("BENCH_MODEL_VERSION"):
    version = artifacts.load(_root, os.environ["BENCH_MODEL_VERSION"])
else:
    from benchmarks.run import load_default

    version = load_default(_root)
pipeline = artifacts.load_pipeline(version)
clean = version.compiled.clean
classes = list(pipeline.classes_)
_threshold = float(version.args.get("threshold", 0.0))


def predict_proba(texts: list[str]):
    """The pipeline's probabilities for raw texts."""
    return pipeline.predict_proba([clean(t) for t in texts])


def predict_tags(texts: list[str]) -> list[str]:
    """One tag per raw text: the top class, or ``other`` below the version's threshold."""
    return [classes[row.argmax()] if row.max() >= _threshold else OTHER for row in predict_proba(texts)]
