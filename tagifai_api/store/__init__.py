"""The service's mutable state: the registry's pointers and history, the API keys and the audit log,
in one database (:mod:`.database`), with its schema's migrations beside it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import logging

from tagifai_api.store.database import Store, StoreUnavailableError
from tagifai_api.store.legacy import import_files

log = logging.getLogger("tagifai_api.store")


def open_store(values: Mapping[str, object], on_error: Callable[[str], None] | None = None) -> Store:
    """The store the settings name (``DATABASE_URL``). With ``STORE_UPGRADE`` its schema is brought up
    to this code's and the old state files are imported into it if it is empty; else the schema is
    only checked (a Gunicorn worker, whose master did the rest): a worker that cannot reach it
    still starts, and follows the store once it answers, rather than halting the whole server."""
    store = Store(str(values["DATABASE_URL"]), on_error=on_error)
    if values.get("STORE_UPGRADE", True):
        try:
            store.upgrade()
            import_files(store, Path(str(values["ARTIFACTS_DIR"])), Path(str(values["API_KEYS_FILE"])))
        except BaseException:
            store.close()  # the caller never gets it to close
            raise
    else:
        try:
            store.check()
        except StoreUnavailableError as exc:
            log.error("%s; starting anyway, the store is polled until it answers", exc)
    return store
