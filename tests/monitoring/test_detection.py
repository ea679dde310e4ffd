"""The drift statistics on real shifts: each kind of shifted traffic is flagged by the statistic that
should flag it, and in-distribution traffic (projects the version never trained on, and every project
of the dataset) stays ``ok`` on every statistic, window after window.

Windows are observed as the prediction log observes served texts (``profile.observe``: the
predictor's answers and token counts, checked against it in tests/ml/test_profile.py), then compared
with the version's profile as the service compares them. ``python -m benchmarks.drift_detection``
prints the same table and measures the false-alarm rate over many more windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from tagifai_api.ml import data, profile
from tagifai_api.ml import train as training
from tagifai_api.monitoring.service import compare
from tests.helpers import DRIFT_DOMAINS, drift_traffic, held_out

WINDOW = 1000
#: each shift, and the statistics that must call it drift
SHIFTS = {
    "one_class:computer-vision": {"class_js", "class_chi2_p"},
    "one_class:natural-language-processing": {"class_js", "class_chi2_p"},
    "one_class:mlops": {"class_js", "class_chi2_p"},
    "one_class:other": {"class_js", "class_chi2_p"},
    "cooking": {"oov_increase", "confidence_ks"},
    "sports": {"oov_increase", "confidence_ks"},
    "german": {"oov_increase", "confidence_ks"},
    "french": {"oov_increase", "confidence_ks"},
    "short": {"length_psi"},
    "long": {"length_psi"},
}


@pytest.fixture(scope="module")
def projects(train_args):
    return held_out(train_args)


def _observed(trained, texts):
    model = trained.compiled
    return profile.observe(model, trained.args["threshold"], [model.clean(t) for t in texts])


def _window(observed, index) -> dict:
    return {"tags": [observed.tags[i] for i in index], "confidence": observed.confidence[index],
            "tokens": observed.tokens[index], "unknown": observed.unknown[index]}


@pytest.mark.parametrize("kind", SHIFTS)
def test_each_shift_is_flagged_by_the_statistic_that_should_flag_it(trained, projects, kind):
    report = compare(trained.profile, _window(_observed(trained, drift_traffic(kind, WINDOW, 0, projects)),
                                              np.arange(WINDOW)))
    flagged = {name for name, statistic in report.items() if statistic["status"] == "drift"}
    assert SHIFTS[kind] <= flagged, {name: (s["value"], s["status"]) for name, s in report.items()}


@pytest.mark.parametrize("domain", DRIFT_DOMAINS)
def test_a_third_of_another_domain_among_the_projects_is_still_flagged(trained, projects, domain):
    report = compare(trained.profile, _window(_observed(trained, drift_traffic(f"mixed:{domain}:0.33", WINDOW, 0,
                                                                               projects)), np.arange(WINDOW)))
    assert "drift" in {s["status"] for s in report.values()}, report


@pytest.mark.parametrize("pool", ["test split", "whole dataset"])
def test_in_distribution_windows_stay_ok_on_every_statistic(trained, train_args, dataset, projects, pool):
    """20 windows of 1,000 texts drawn with replacement from the 115 projects of the test split (never
    trained on), or from all 764 projects (85 % of them trained on: surer answers, fewer unknown
    words, which must not alarm either)."""
    if pool == "test split":
        texts = list(projects["text"])
    else:
        texts = list(data.prepare(dataset, train_args["accepted_tags"], train_args["min_tag_freq"],
                                  training.stopwords_for(train_args))["text"])
    observed = _observed(trained, texts)
    rng = np.random.default_rng(7)
    for _ in range(20):
        report = compare(trained.profile, _window(observed, rng.integers(0, len(texts), WINDOW)))
        assert {s["status"] for s in report.values()} == {"ok"}, {n: (s["value"], s["status"])
                                                                  for n, s in report.items()}

