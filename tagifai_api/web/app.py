"""The Flask class the service runs on."""

from __future__ import annotations

from flask import Flask


class TagifaiFlask(Flask):
    """Flask, with each view and hook's sync check made once rather than on every request.

    Flask asks ``inspect.iscoroutinefunction`` about every before/after/teardown hook and the view
    on every request (six calls to ``/predict``); a function's answer never changes, so it is kept.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sync_funcs: dict = {}

    def ensure_sync(self, func):
        sync = self._sync_funcs.get(func)
        if sync is None:
            sync = self._sync_funcs[func] = super().ensure_sync(func)
        return sync
