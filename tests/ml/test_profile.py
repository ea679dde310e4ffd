"""A version's reference profile: what its model answers on texts like its training texts, written
with its files at training and checksummed with them; computed alike later for an older version."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tagifai_api import settings
from tagifai_api.ml import artifacts, data, profile
from tagifai_api.ml import train as training
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.ml.predict import Predictor
from tests.helpers import held_out, load_default


def test_the_profile_counts_every_project_once(trained, dataset):
    p = profile.check(trained.profile)
    assert p["texts"] == len(dataset) == sum(p["classes"]["counts"]) == sum(p["confidence"]["counts"]) \
        == sum(p["tokens"]["counts"])
    assert p["classes"]["labels"] == trained.labels
    assert p["confidence"]["edges"] == list(profile.CONFIDENCE_EDGES)
    assert len(p["tokens"]["counts"]) == profile.LENGTH_BUCKETS
    # quintiles: each bucket holds about a fifth of the texts
    assert all(0.1 < c / p["texts"] < 0.3 for c in p["tokens"]["counts"])
    assert p["oov"]["rate"] == pytest.approx(p["oov"]["unknown"] / p["oov"]["tokens"])


def test_the_profile_sees_the_training_texts_as_new_ones(trained, train_args):
    """Answered out of fold, the training texts look like the held-out test split (which the version
    never saw), not like themselves answered by the model fitted on them."""
    projects = held_out(train_args)
    model = trained.compiled
    test = profile.observe(model, trained.args["threshold"], projects["clean"])
    test_oov = test.unknown.sum() / test.tokens.sum()
    assert trained.profile["oov"]["rate"] == pytest.approx(test_oov, abs=0.03)
    every = data.prepare(data.load_dataset(settings.DATA_FILE), train_args["accepted_tags"],
                         train_args["min_tag_freq"], training.stopwords_for(train_args))
    seen = profile.observe(model, trained.args["threshold"], every["clean"])  # 85 % of them trained on
    assert seen.unknown.sum() / seen.tokens.sum() < trained.profile["oov"]["rate"] / 3
    bins = trained.profile["confidence"]
    centres = np.array(bins["edges"][:-1]) + 0.01
    mean_confidence = float(centres @ np.array(bins["counts"])) / trained.profile["texts"]
    assert mean_confidence == pytest.approx(test.confidence.mean(), abs=0.03)
    assert seen.confidence.mean() > mean_confidence + 0.05


def test_observe_answers_as_the_predictor_does(artifacts_dir, train_args):
    version = load_default(artifacts_dir)
    predictor = Predictor(version)
    texts = list(held_out(train_args)["text"][:40]) + ["", "Kochrezept für Apfelkuchen", "a"]
    seen = profile.observe(version.compiled, version.args["threshold"], [predictor.clean(t) for t in texts])
    answers = predictor.predict(texts)
    assert seen.tags == [a["predicted_tag"] for a in answers]
    assert np.allclose(seen.confidence, [a["confidence"] for a in answers], atol=1e-12)
    assert [(int(t), int(u)) for t, u in zip(seen.tokens, seen.unknown, strict=True)] == \
        [predictor.token_stats(predictor.clean(t)) for t in texts]


def test_the_profile_is_written_and_checksummed_with_the_version(artifacts_dir, trained):
    version = load_default(artifacts_dir)
    assert artifacts.PROFILE_FILE in version.manifest["files"]
    assert artifacts.load_profile(version) == json.loads(json.dumps(trained.profile))


def test_an_older_version_gets_the_same_profile_from_the_dataset(artifacts_dir, dataset):
    version = load_default(artifacts_dir)
    assert training.version_profile(dataset, version.args, version.compiled) == artifacts.load_profile(version)


def test_a_damaged_profile_is_a_clear_error(artifacts_copy):
    version = load_default(artifacts_copy)
    path = version.path / artifacts.PROFILE_FILE
    path.write_text(path.read_text().replace('"format": 1', '"format": 2'))
    with pytest.raises(ArtifactError, match="profile.json does not match its sha256"):
        artifacts.load_profile(version)
    path.unlink()
    with pytest.raises(ArtifactError, match="profile.json is missing"):
        artifacts.load_profile(version)


def test_a_version_written_without_a_profile_has_none(artifacts_copy):
    version = load_default(artifacts_copy)
    (version.path / artifacts.PROFILE_FILE).unlink()
    manifest = dict(version.manifest, files={k: v for k, v in version.manifest["files"].items()
                                             if k != artifacts.PROFILE_FILE})
    (version.path / artifacts.MANIFEST).write_text(json.dumps(manifest))
    older = load_default(artifacts_copy)
    assert artifacts.load_profile(older) is None
    artifacts.verify_files(older)  # still a sound version


@pytest.mark.parametrize("change, why", [
    (lambda p: p.update(format=9), "format 9"),
    (lambda p: p["classes"]["counts"].pop(), "as many counts as labels"),
    (lambda p: p["tokens"]["edges"].reverse(), "increasing edges"),
    (lambda p: p["confidence"]["counts"].__setitem__(0, -1), "whole numbers"),
    (lambda p: p.pop("oov"), "oov needs"),
])
def test_check_refuses_a_profile_of_another_shape(trained, change, why):
    broken = json.loads(json.dumps(trained.profile))
    change(broken)
    with pytest.raises(profile.ProfileError, match=why):
        profile.check(broken)
