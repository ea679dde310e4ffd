"""The drift statistics against scipy's own implementations, to 1e-9, on fixed data: the service
computes them with numpy alone (scipy.stats would cost every worker about 70 MB)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from tagifai_api.ml.profile import CONFIDENCE_EDGES, histogram
from tagifai_api.monitoring import statistics as s

#: class counts: reference, then windows (a close one, a shifted one, one class only, one with a
#: class the reference never gave)
REFERENCE = [280, 66, 313, 105]
WINDOWS = [[390, 80, 400, 130], [100, 10, 820, 70], [0, 0, 1000, 0], [300, 0, 500, 0]]
REFERENCE_WITH_EMPTY = [280, 0, 313, 105]


@pytest.mark.parametrize("window", [*WINDOWS, REFERENCE])
def test_jensen_shannon_distance_is_scipys_base_2(window):
    assert s.js_distance(REFERENCE, window) == pytest.approx(jensenshannon(REFERENCE, window, base=2), abs=1e-9)


def test_jensen_shannon_distance_bounds():
    assert s.js_distance(REFERENCE, REFERENCE) == 0.0
    assert s.js_distance([1, 0], [0, 1]) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("reference", [REFERENCE, REFERENCE_WITH_EMPTY])
def test_chi_squared_is_scipys_test_of_homogeneity(reference, window):
    table = np.array([reference, window])
    table = table[:, table.sum(axis=0) > 0]  # scipy refuses a column of zeros; the service leaves it out
    expected = stats.chi2_contingency(table, correction=False)
    statistic, p, dof = s.chi_squared(reference, window)
    assert statistic == pytest.approx(expected.statistic, abs=1e-9)
    assert p == pytest.approx(expected.pvalue, abs=1e-9)
    assert dof == expected.dof


def test_chi_squared_of_a_single_category_tests_nothing():
    assert s.chi_squared([10, 0], [5, 0]) == (0.0, 1.0, 0)


@pytest.mark.parametrize("dof", range(1, 12))
def test_chi2_survival_function_is_scipys(dof):
    for x in (0.0, 1e-6, 0.3, 1.0, 2.5, 7.8, 11.34, 20.0, 45.0, 120.0, 700.0):
        assert s.chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), abs=1e-9), x


def test_kolmogorov_survival_function_is_scipys():
    for z in np.linspace(0.02, 4.0, 400):
        assert s.kolmogorov_sf(z) == pytest.approx(stats.kstwobign.sf(z), abs=1e-9), z


def _samples(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a window of top-class confidences, the window a little less sure."""
    rng = np.random.default_rng(seed)
    return 0.25 + 0.75 * rng.beta(5, 1.6, 764), 0.25 + 0.75 * rng.beta(4, 1.8, 1000)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_from_histograms_is_scipys_ks_2samp_of_the_binned_samples(seed, alternative):
    """The statistic is exactly ks_2samp's on the samples the histograms stand for (each value moved
    to its bin's lower edge); the one-sided p-value is its asymptotic one, the two-sided one
    Kolmogorov's limit (kstwobign) at the same z."""
    reference, window = _samples(seed)
    edges = np.array(CONFIDENCE_EDGES)
    r, w = histogram(reference, edges), histogram(window, edges)
    binned_r, binned_w = np.repeat(edges[:-1], r), np.repeat(edges[:-1], w)
    d, p = s.ks_from_histograms(r, w, alternative)
    expected = stats.ks_2samp(binned_w, binned_r, alternative=alternative, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-9)
    if alternative == "two-sided":
        z = d * np.sqrt(len(reference) * len(window) / (len(reference) + len(window)))
        assert p == pytest.approx(stats.kstwobign.sf(z), abs=1e-9)
    else:
        assert p == pytest.approx(expected.pvalue, abs=1e-9)


def test_binning_moves_the_statistic_little():
    """With 50 bins of 0.02 the binned statistic stays within one bin's mass of the exact one."""
    reference, window = _samples(3)
    r, w = histogram(reference, CONFIDENCE_EDGES), histogram(window, CONFIDENCE_EDGES)
    exact = stats.ks_2samp(window, reference).statistic
    assert abs(s.ks_from_histograms(r, w)[0] - exact) <= max(r.max() / r.sum(), w.max() / w.sum())


def test_ks_of_identical_histograms_is_zero_and_one_sided_never_negative():
    r = histogram(_samples(4)[0], CONFIDENCE_EDGES)
    assert s.ks_from_histograms(r, r) == (0.0, 1.0)
    sure = histogram(np.full(500, 0.99), CONFIDENCE_EDGES)  # more confident than the reference
    assert s.ks_from_histograms(r, sure, "greater")[0] == 0.0
    assert s.ks_from_histograms(r, sure, "less")[0] > 0.5


def test_psi_matches_its_formula_with_a_floor_for_empty_buckets():
    reference, window = np.array([171, 151, 169, 150, 123]), np.array([0, 1, 32, 166, 801])
    p, q = reference / reference.sum(), np.maximum(window / window.sum(), s.PSI_FLOOR)
    assert s.psi(reference, window) == pytest.approx(float(((q - p) * np.log(q / p)).sum()), abs=1e-12)
    assert s.psi(reference, reference) == 0.0
    # a small shift is small; all in one bucket is a major one
    assert s.psi(reference, reference + np.array([5, -5, 0, 0, 0])) < 0.01
    assert s.psi(reference, [1000, 0, 0, 0, 0]) > 0.25


def test_histogram_puts_values_outside_the_edges_in_the_end_bins():
    assert histogram([-1, 0, 0.5, 1.0, 1.0, 7], [0, 0.5, 1.0]).tolist() == [2, 4]


@pytest.mark.parametrize("bad", [[], [0, 0], [1, -1], [[1, 2]]])
def test_counts_that_are_no_distribution_are_refused(bad):
    with pytest.raises(ValueError):
        s.js_distance(bad, bad)


def test_histograms_of_different_bins_are_refused():
    with pytest.raises(ValueError, match="same bins"):
        s.psi([1, 2, 3], [1, 2])
