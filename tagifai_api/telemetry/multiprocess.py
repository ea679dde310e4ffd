"""Keeping Prometheus' multiprocess directory right as Gunicorn workers come and go.

Every worker writes ``<type>_<pid>.db`` files. Left alone they pile up as workers are recycled,
and deleting them would lose counts. So when a worker exits, the master folds its counters and
histograms into ``<type>_archive.db`` and removes its files; its gauges describe a process that is
gone and are dropped. A shared/exclusive file lock keeps a scrape from reading mid-fold (which
would count the dead worker twice, or miss a file that disappeared).

Imported by the Gunicorn master: only the standard library here (:mod:`tagifai_api.store.files`
is too), and prometheus_client is imported inside the functions, after ``PROMETHEUS_MULTIPROC_DIR``
is set.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Callable
from contextlib import AbstractContextManager

from tagifai_api.store import files

_LOCK_FILE = ".lock"


def locked(directory: str, exclusive: bool) -> AbstractContextManager[None]:
    """Hold the directory's lock, shared for readers and exclusive for the fold."""
    return files.locked(os.path.join(directory, _LOCK_FILE), shared=not exclusive, mode=0o600)


def archive_dead_worker(directory: str, pid: int) -> int:
    """Fold a dead worker's samples into the archive files; return how many files it removed."""
    from prometheus_client.mmap_dict import MmapedDict
    from prometheus_client.multiprocess import mark_process_dead

    if not os.path.isdir(directory):
        return 0
    mark_process_dead(pid, directory)
    removed = 0
    with locked(directory, exclusive=True):
        for path in glob.glob(os.path.join(directory, f"*_{pid}.db")):
            kind = os.path.basename(path).split("_")[0]
            if kind != "gauge":
                archive = MmapedDict(os.path.join(directory, f"{kind}_archive.db"))
                try:
                    for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                        total, _ = archive.read_value(key)
                        archive.write_value(key, total + value, timestamp)
                finally:
                    archive.close()
            os.remove(path)
            removed += 1
    return removed


def read_locked(view: Callable) -> Callable:
    """Wrap the ``/metrics`` view so a scrape never overlaps a fold."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return view(*args, **kwargs)
        with locked(directory, exclusive=False):
            return view(*args, **kwargs)

    return wrapper
