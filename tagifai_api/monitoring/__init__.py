"""Drift: whether a version's live texts still look like the ones its model learned from. Its
statistics (statistics.py, numpy only), the monitor that reads the prediction log against each
version's reference profile (service.py), ``GET /models/<version>/drift`` (views.py), the
``tagifai_drift`` gauges computed at scrape time (metrics.py) and ``drift profile|report`` (cli.py)."""
