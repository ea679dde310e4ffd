"""Start-up checks: a setting, directory, state store or port the service cannot use stops it with
one line on standard error and exit status 2, never a traceback or a worker that fails to boot.

No Flask: the Gunicorn master runs these (``gunicorn.conf.py``) without importing the app. It also
brings the store's schema up to date here, once, before any worker starts.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NoReturn

from tagifai_api import settings

EXIT_STATUS = 2


class StartupError(Exception):
    """Something the service cannot start with; the message says what and what would do."""


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(EXIT_STATUS)


def serving_settings(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The settings, checked as the web service needs them: every ``TAGIFAI_*`` variable known and
    well-formed, the artifacts directory present."""
    try:
        values = settings.from_env(environ)
    except settings.SettingError as exc:
        raise StartupError(str(exc)) from None
    artifacts_dir = Path(str(values["ARTIFACTS_DIR"]))
    if not artifacts_dir.is_dir():
        raise StartupError(
            f"TAGIFAI_ARTIFACTS_DIR: {artifacts_dir} is not a directory; set it to a directory of model versions, "
            "or create one with `make model` (python -m tagifai_api train)")
    return values


def prepare_store(values: Mapping[str, object]) -> None:
    """Create or upgrade the store's schema and import the old state files (once, here in the master,
    never by workers racing); a store that cannot be used stops the service."""
    from tagifai_api.store import open_store
    from tagifai_api.store.database import StoreError
    from tagifai_api.store.legacy import LegacyFileError

    try:
        open_store({**values, "STORE_UPGRADE": True}).close()
    except StoreError as exc:
        raise StartupError(f"TAGIFAI_DATABASE_URL: {exc}") from None
    except LegacyFileError as exc:
        raise StartupError(f"{exc.setting}: {exc}; fix the file or move it away (the old state files are imported "
                           "into an empty store once)") from None


def check_free(addresses: Iterable[object]) -> None:
    """Every TCP address Gunicorn is about to listen on can be bound (Gunicorn itself retries for
    five seconds, then exits with a log line on standard output)."""
    for address in addresses:
        if not isinstance(address, tuple):
            continue  # a Unix socket path: Gunicorn replaces a stale one itself
        host, port = address[0], address[1]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Gunicorn binds
            try:
                probe.bind((host, port))
            except OSError as exc:
                shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
                why = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
                raise StartupError(f"PORT / GUNICORN_BIND: {shown} {why}; choose a free port, "
                                   "e.g. `make serve PORT=8001`") from None


def check_or_exit(addresses: Iterable[object] = ()) -> dict[str, object]:
    """:func:`serving_settings` and :func:`check_free`, turning a problem into :func:`fail`."""
    try:
        values = serving_settings()
        check_free(addresses)
        if values["STORE_UPGRADE"]:
            prepare_store(values)
    except StartupError as exc:
        fail(str(exc))
    return values
