"""``tagifai_drift{model_version, statistic}``, ``tagifai_drift_status{model_version}`` and
``tagifai_drift_window_texts{model_version}``: computed from the store when ``/metrics`` is scraped,
not counted by each worker, so every worker gives the same values (within the monitor's cache)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily

from tagifai_api.monitoring.service import DriftMonitor, status_code

log = logging.getLogger("tagifai_api.monitoring")


class DriftCollector:
    """A prometheus_client collector over every version with logged predictions.

    Args:
        monitor: computes (and caches) each version's report.
        versions: the versions to look at (the artifacts directory's, read at each scrape).
    """

    def __init__(self, monitor: DriftMonitor, versions: Callable[[], list[str]]) -> None:
        self.monitor = monitor
        self.versions = versions

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("tagifai_drift", "Drift statistics of each version's newest logged predictions "
                              "against its reference profile (GET /models/<version>/drift explains each).",
                              labels=["model_version", "statistic"]),
            GaugeMetricFamily("tagifai_drift_status", "Worst drift status of each version's statistics: 0 ok, "
                              "1 warn, 2 drift, -1 unknown (not enough data or no profile).",
                              labels=["model_version"]),
            GaugeMetricFamily("tagifai_drift_window_texts", "Logged predictions in each version's drift window.",
                              labels=["model_version"]),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples: registering the collector must not read the store."""
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        drift, status, texts = self._families()
        try:
            reports = self.monitor.reports(self.versions())
        except Exception:  # noqa: BLE001 - a scrape answers with the other metrics whatever happens here
            log.exception("drift metrics failed")
            reports = {}
        for version, report in sorted(reports.items()):
            if not report["window"]["texts"]:
                continue  # a version never served: nothing to say, and no series to keep
            texts.add_metric([version], report["window"]["texts"])
            status.add_metric([version], status_code(report["status"]))
            for name, statistic in (report.get("statistics") or {}).items():
                if statistic["value"] is not None:
                    drift.add_metric([version, name], statistic["value"])
        return iter((drift, status, texts))
