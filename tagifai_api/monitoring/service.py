"""Drift of each version: its newest logged predictions against its reference profile.

:func:`compare` is the arithmetic (no I/O); :class:`DriftMonitor` finds a version's profile (its
``profile.json``, else the one the state store keeps), reads the window from the prediction log and
remembers the answer for a few seconds, so scrapes and listings stay cheap. No Flask.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from tagifai_api.ml import artifacts
from tagifai_api.ml import profile as profiles
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.ml.versions import InvalidVersionError
from tagifai_api.monitoring import statistics as stats
from tagifai_api.settings import DEFAULTS, DRIFT_THRESHOLDS, drift_thresholds
from tagifai_api.store.database import Store, StoreError, StoreUnavailableError

log = logging.getLogger("tagifai_api.monitoring")

#: a statistic's or a version's status, worst last, and its value in ``tagifai_drift_status``
STATUSES = {"ok": 0, "warn": 1, "drift": 2}
#: not enough logged predictions, or no reference profile: unknown, never an alarm
UNKNOWN = {"not_enough_data": -1, "no_profile": -1}
DEFAULT_THRESHOLDS = drift_thresholds(DEFAULTS)
MEANINGS = {
    "class_js": "Jensen-Shannon distance (base 2) between the window's and the reference's predicted-class shares",
    "class_chi2_p": "p-value of the chi-squared test that the window's and the reference's class counts share "
                    "one distribution",
    "confidence_ks": "Kolmogorov-Smirnov statistic of the top-class confidence: how much more of the window "
                     "lies below any confidence than of the reference",
    "length_psi": "population stability index of the text length in tokens, over the reference's quintiles",
    "oov_increase": "the window's out-of-vocabulary rate minus the reference's",
}


def _status(value: float | None, thresholds: tuple[float, float], lower_is_worse: bool) -> str:
    if value is None:
        return "ok"
    warn, drift = thresholds
    if lower_is_worse:
        return "drift" if value < drift else "warn" if value < warn else "ok"
    return "drift" if value >= drift else "warn" if value >= warn else "ok"


def _worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=STATUSES.__getitem__, default="ok")


def _shares(labels: list[str], counts: list[float]) -> dict[str, float]:
    total = sum(counts) or 1
    return {label: round(count / total, 4) for label, count in zip(labels, counts, strict=True)}


def compare(profile: Mapping, window: Mapping, thresholds: Mapping[str, tuple[float, float]] | None = None) -> dict:
    """Every statistic of a window (``tags``, ``confidence``, ``tokens``, ``unknown``: one entry per
    text, as :meth:`Store.drift_window` reads them) against a reference ``profile``: its value, its
    thresholds, its status, and what it was computed from."""
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    tags = list(window["tags"])
    labels = list(profile["classes"]["labels"])
    labels += sorted({t for t in tags if t not in labels})  # a tag the reference never gave
    reference_classes = list(profile["classes"]["counts"]) + [0] * (len(labels) - len(profile["classes"]["counts"]))
    window_classes = [tags.count(label) for label in labels]
    chi2, p_value, dof = stats.chi_squared(reference_classes, window_classes)
    confidence = profiles.histogram(window["confidence"], profile["confidence"]["edges"])
    ks, ks_p = stats.ks_from_histograms(profile["confidence"]["counts"], confidence, alternative="greater")
    two_sided, _ = stats.ks_from_histograms(profile["confidence"]["counts"], confidence)
    lengths = profiles.histogram(window["tokens"], profile["tokens"]["edges"])
    tokens, unknown = sum(window["tokens"]), sum(window["unknown"])
    oov = unknown / tokens if tokens else None
    reference_oov = float(profile["oov"]["rate"])

    values = {
        "class_js": (stats.js_distance(reference_classes, window_classes),
                     {"window": _shares(labels, window_classes), "reference": _shares(labels, reference_classes)}),
        "class_chi2_p": (p_value, {"chi2": round(chi2, 4), "dof": dof}),
        "confidence_ks": (ks, {"p_value": float(f"{ks_p:.4g}"), "two_sided": round(two_sided, 6)}),
        "length_psi": (stats.psi(profile["tokens"]["counts"], lengths),
                       {"edges": list(profile["tokens"]["edges"]),
                        "window": lengths.tolist(), "reference": list(profile["tokens"]["counts"])}),
        "oov_increase": (None if oov is None else oov - reference_oov,
                         {"window": None if oov is None else round(oov, 6), "reference": round(reference_oov, 6)}),
    }
    out = {}
    for name, (value, detail) in values.items():
        lower_is_worse = DRIFT_THRESHOLDS[name][1]
        warn, drift = thresholds[name]
        shown = None if value is None else float(f"{value:.4g}") if lower_is_worse else round(float(value), 6)
        out[name] = {"value": shown, "warn": warn, "drift": drift, "worse": "lower" if lower_is_worse else "higher",
                     "status": _status(value, (warn, drift), lower_is_worse), **detail}
    return out


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


class DriftMonitor:
    """Reports of each version's drift, from the store, each kept ``cache_s`` seconds.

    Args:
        store: holds the prediction log and the profiles of versions written without one.
        artifacts_dir: the versions.
        window: newest logged texts compared (``TAGIFAI_DRIFT_WINDOW``).
        minimum: fewer texts than this are not enough to say anything (``TAGIFAI_DRIFT_MIN``).
        thresholds: ``{statistic: (warn, drift)}`` (``TAGIFAI_DRIFT_*``).
        cache_s: how long a report is reused.
    """

    def __init__(self, store: Store, artifacts_dir: Path, window: int = 1000, minimum: int = 200,
                 thresholds: Mapping[str, tuple[float, float]] | None = None, cache_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.artifacts_dir = Path(artifacts_dir)
        self.window = window
        self.minimum = minimum
        self.thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
        self.cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._reports: dict[str, tuple[float, dict]] = {}
        self._profiles: dict[str, tuple[dict, str]] = {}

    def profile(self, version: str) -> tuple[dict, str] | None:
        """``(profile, where it is kept: "version" or "store")``, or None when there is none yet.

        Raises:
            InvalidVersionError: the version's profile file is damaged (its other files may be sound).
            StoreError: the store cannot be read, or its copy is damaged.
        """
        known = self._profiles.get(version)
        if known is not None:
            return known
        try:
            model = artifacts.load(self.artifacts_dir, version, compiled=False)
            found = artifacts.load_profile(model)
        except ArtifactError as exc:
            raise InvalidVersionError(version, str(exc)) from None
        where = "version"
        if found is None:
            found, where = self.store.drift_profile(version), "store"
            if found is None:
                return None  # not remembered: `drift profile` may store one any time
            try:
                profiles.check(found)
            except profiles.ProfileError as exc:
                raise StoreError(f"the stored profile of {version} is {exc}") from None
        self._profiles[version] = (found, where)  # a version's profile never changes once it has one
        return found, where

    def report(self, version: str) -> dict:
        """The drift of ``version`` now (or as computed less than ``cache_s`` ago)."""
        now = self._clock()
        with self._lock:
            cached = self._reports.get(version)
            if cached is not None and now - cached[0] < self.cache_s:
                return cached[1]
            report = self._compute(version)
            self._reports[version] = (self._clock(), report)
            return report

    def reports(self, versions: Iterable[str]) -> dict[str, dict]:
        """:meth:`report` of each version; one the store cannot answer for is left out (and logged)."""
        out = {}
        for version in versions:
            try:
                out[version] = self.report(version)
            except (StoreError, InvalidVersionError) as exc:
                if not isinstance(exc, StoreUnavailableError):
                    log.warning("drift of %s: %s", version, exc)
        return out

    def _compute(self, version: str) -> dict:
        found = self.profile(version)
        window = self.store.drift_window(version, self.window)
        texts = len(window["tags"])
        report = {
            "model_version": version,
            "status": None,
            "window": {"texts": texts, "size": self.window, "minimum": self.minimum,
                       "from": _iso(window["first_at"]), "to": _iso(window["last_at"])},
            "computed_at": _iso(time.time()),
        }
        if found is None:
            report.update(status="no_profile", reference=None, statistics=None,
                          message=f"{version} has no reference profile: compute it once with "
                                  f"`python -m tagifai_api drift profile {version}`.")
            return report
        profile, where = found
        report["reference"] = {"texts": profile["texts"], "kept_in": where, "source": profile.get("source")}
        if texts < self.minimum:
            report.update(status="not_enough_data", message=f"{texts} logged predictions of {version}; "
                                                            f"the statistics need at least {self.minimum}.",
                          statistics={name: {"value": None, "warn": warn, "drift": drift,
                                             "status": "not_enough_data"}
                                      for name, (warn, drift) in self.thresholds.items()})
            return report
        statistics = compare(profile, window, self.thresholds)
        report.update(status=_worst(s["status"] for s in statistics.values()), statistics=statistics)
        return report


def status_code(status: str) -> int:
    """A report's status as ``tagifai_drift_status`` gives it: 0 ok, 1 warn, 2 drift, -1 unknown."""
    return STATUSES.get(status, UNKNOWN.get(status, -1))
