import json
import os
from pathlib import Path

from click.testing import CliRunner

from tagifai_api.cli import cli
from tests.helpers import cli_env, default_of, open_registry


def _run(*args):
    """The command against the artifacts folder after ``--artifacts`` and the store inside it."""
    env = cli_env(Path(args[args.index("--artifacts") + 1])) if "--artifacts" in args else None
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env=env)


def test_predict_prints_json(artifacts_dir):
    result = _run("--artifacts", str(artifacts_dir), "predict", "Generative adversarial networks for image generation.")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["predictions"][0]["predicted_tag"] == "computer-vision"
    assert out["model_version"]


def test_train_evaluate_versions(tmp_path):
    root = tmp_path / "a"
    trained = _run("--artifacts", str(root), "train")
    assert trained.exit_code == 0, trained.output
    version = json.loads(trained.output[trained.output.index("{"):])["version"]
    listed = _run("--artifacts", str(root), "versions")
    assert f"* {version}" in listed.output
    evaluated = _run("--artifacts", str(root), "evaluate")
    report = json.loads(evaluated.output)
    stored = json.loads((root / version / "performance.json").read_text())
    assert report == stored
    again = _run("--artifacts", str(root), "ensure-model")
    assert again.exit_code == 0
    assert _run("--artifacts", str(root), "versions").output.count("v") == 1


def test_artifact_errors_are_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    open_registry(tmp_path).store.close()  # a store that records no default
    proc = subprocess.run([sys.executable, "-m", "tagifai_api", "--artifacts", str(tmp_path), "predict", "x"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **cli_env(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no default model") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_cv_reports_cross_validation_and_the_time_ordered_score():
    result = _run("cv", "--folds", "3")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["folds"] == 3 and 0.5 < out["f1_weighted_mean"] <= 1.0
    held_out = out["time_ordered"]
    assert 0.5 < held_out["f1_weighted"] <= 1.0
    assert held_out["test_projects"] == round(0.2 * (held_out["train_projects"] + held_out["test_projects"]))


def test_predict_explain_prints_exact_explanations(artifacts_dir):
    text = "Transfer learning with transformers for text classification."
    result = _run("--artifacts", str(artifacts_dir), "predict", "--explain", text)
    assert result.exit_code == 0, result.output
    prediction = json.loads(result.output)["predictions"][0]
    e = prediction["explanation"]
    assert e["tag"] == prediction["predicted_tag"] == "natural-language-processing"
    assert abs(e["intercept"] + sum(w["contribution"] for w in e["words"]) - e["score"]) < 1e-9
    assert [w["text"] for w in e["words"] if w["dropped"]] == ["with", "for", "."]
    plain = json.loads(_run("--artifacts", str(artifacts_dir), "predict", text).output)["predictions"][0]
    assert "explanation" not in plain


def test_set_default_and_rollback_go_through_the_registry(registry_root):
    root, first, second = registry_root
    switched = _run("--artifacts", str(root), "set-default", second, "--reason", "better F1")
    assert switched.exit_code == 0, switched.output
    assert json.loads(switched.output) == {"previous": first, "default": second}
    assert f"* {second}" in _run("--artifacts", str(root), "versions").output
    back = _run("--artifacts", str(root), "rollback", "--reason", "a regression")
    assert json.loads(back.output) == {"previous": second, "default": first}
    registry = open_registry(root)
    changes = registry.store.audit(limit=2)
    registry.store.close()
    assert [(c["action"], c["from"], c["to"], c["key_name"], c["reason"]) for c in changes] == [
        ("rollback", second, first, None, "a regression"), ("set_default", first, second, None, "better F1")]


def test_refused_switches_are_one_line_and_exit_2(registry_root):
    import subprocess
    import sys

    root, first, second = registry_root
    (root / second / "model.npz").write_bytes(b"damaged")
    for args, message in ((["set-default", second], "does not match its sha256"),
                          (["set-default", "nope"], "unknown model version 'nope'"),
                          (["rollback"], "history is empty")):
        proc = subprocess.run([sys.executable, "-m", "tagifai_api", "--artifacts", str(root), *args],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **cli_env(root)})
        assert proc.returncode == 2, proc
        assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1
    assert default_of(root) == first
    registry = open_registry(root)
    assert registry.history() == [] and [c["action"] for c in registry.store.audit()] == ["set_default"]
    registry.store.close()


def test_seed_copies_the_versions_into_an_empty_directory(registry_root, tmp_path):
    source, first, second = registry_root
    seeded = _run("--artifacts", str(tmp_path / "volume"), "seed", str(source))
    assert seeded.exit_code == 0, seeded.output
    # the source's versions carry no state: the newest of them becomes the volume's default
    assert json.loads(seeded.output) == {"copied": [first, second], "default": second}
    assert default_of(tmp_path / "volume") == second


def test_an_explicit_version_needs_no_store(artifacts_dir):
    """--version names the version: a state store that is down stops only what needs the default."""
    import subprocess
    import sys

    version = default_of(artifacts_dir)
    down = {**os.environ, **cli_env(artifacts_dir), "TAGIFAI_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"}
    base = [sys.executable, "-m", "tagifai_api", "--artifacts", str(artifacts_dir), "predict"]
    named = subprocess.run([*base, "--version", version, "YOLO object detection"], capture_output=True, text=True,
                           timeout=60, env=down)
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["model_version"] == version
    default = subprocess.run([*base, "YOLO object detection"], capture_output=True, text=True, timeout=60, env=down)
    assert default.returncode == 2 and default.stdout == ""
    assert default.stderr.startswith("error: the state store is unavailable") and default.stderr.count("\n") == 1
