"""Offline batch scoring: ``python -m tagifai_api score INPUT --output OUTPUT``.

A command line over ``tagifai_api.ml`` (never the web layer): it streams a CSV or JSON Lines file
through the service's own :class:`~tagifai_api.ml.predict.Predictor` in chunks, in parallel
processes, and commits the output chunk by chunk so that an interrupted run can be resumed.

Modules: ``formats`` (reading records, writing rows), ``chunks`` (scoring one chunk, in a worker),
``journal`` (the committed-progress file), ``progress`` (bar or log lines) and ``job`` (the run).
"""
