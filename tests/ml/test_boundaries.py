"""Model code stays plain Python: importing it must not pull in the web stack."""

import subprocess
import sys


def test_ml_package_never_imports_flask():
    code = (
        "import sys\n"
        "import tagifai_api.ml.data, tagifai_api.ml.train, tagifai_api.ml.evaluate\n"
        "import tagifai_api.ml.artifacts, tagifai_api.ml.predict, tagifai_api.ml.compiled\n"
        "import tagifai_api.cli, tagifai_api.serving.batcher, tagifai_api.serving.service\n"
        "import tagifai_api.scoring.job, tagifai_api.scoring.chunks\n"
        "bad = [m for m in ('flask', 'werkzeug', 'marshmallow', 'prometheus_client') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_serving_path_does_not_import_sklearn_or_pandas():
    """Workers stay small: the compiled model needs numpy only."""
    code = (
        "import sys\n"
        "from tagifai_api.ml import artifacts, predict\n"
        "from tagifai_api.serving import service, batcher, cache\n"
        "from tagifai_api.scoring import job, chunks  # batch-scoring workers stay small too\n"
        "bad = [m for m in ('sklearn', 'pandas', 'scipy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
