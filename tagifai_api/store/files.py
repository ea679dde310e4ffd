"""Locked, atomic writes of small state files: the registry's pointers, the keys file, the batch
scorer's progress file, and the lock over Prometheus' multiprocess directory.

Standard library only (``fcntl.flock``): the Gunicorn master imports this, and the metrics
directory needs a shared lock for a scrape beside the exclusive one for a fold, which the
``filelock`` package does not offer on flock (its read/write lock is a SQLite database).
"""

from __future__ import annotations

import fcntl
import glob
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(path: str | os.PathLike, *, shared: bool = False, mode: int = 0o644) -> Iterator[None]:
    """Hold an ``flock`` on ``path``: exclusive, or ``shared`` with other shared holders.

    The file is created with ``mode`` when missing and never removed, so every process waits on
    the same inode. The lock belongs to the open file, not the process: two threads taking it
    block each other too.
    """
    fd = os.open(path, os.O_CREAT | os.O_RDWR, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_atomic(path: str | os.PathLike, data: str | bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8), so a reader sees the old file or the new one, whole.

    The data goes to a temporary file in the same directory (a rename is atomic only within one
    file system) and is fsynced before the rename, or a crash could leave the new name on empty
    data; then the directory is fsynced, so the rename itself survives a crash. A failed write
    removes the temporary file and leaves ``path`` as it was.

    Args:
        mode: the file's permissions, whatever the umask (the keys file: 0600); by default those
            of a new file, 0666 less the umask.
    """
    path = Path(path)
    body = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def leftovers(path: str | os.PathLike) -> list[Path]:
    """Temporary files of :func:`write_atomic` that a crash mid-write left beside ``path``."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory ``path`` (a rename, a removal) survive a crash, where the file
    system can sync a directory at all; one that cannot is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
