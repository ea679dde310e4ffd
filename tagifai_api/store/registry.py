"""The model registry's state on disk: the default with its history, and the shadow. Plain Python:
the CLI and every web worker go through these functions.

The state lives in the artifacts directory, never in a process, so every worker of every replica
sharing that directory (a shared volume) sees the same thing:

- ``DEFAULT``: the version new requests get, one line, replaced atomically (see :mod:`tagifai_api.store.files`).
- ``DEFAULT.history.json``: the defaults it replaced, newest last; a rollback pops it.
- ``SHADOW``: the version that also scores live traffic, absent when there is none.
- ``.registry.lock``: writers take it (``flock``), so two replicas switching at once cannot lose a
  history entry.

Readers never take the lock: each file is replaced whole, so a reader sees the old or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tagifai_api.ml import artifacts, versions
from tagifai_api.ml.artifacts import ArtifactError, ModelVersion
from tagifai_api.store import files

HISTORY_FILE = "DEFAULT.history.json"
SHADOW_POINTER = "SHADOW"
LOCK_FILE = ".registry.lock"
#: older entries are dropped: a rollback goes back at most this far
HISTORY_LIMIT = 50


class RegistryReadError(ArtifactError):
    """The registry's files cannot be read (permissions, a damaged history)."""


class VerificationError(ArtifactError):
    """A version failed the verification a switch makes first; nothing changed."""


class RegistryConflictError(ArtifactError):
    """The registry cannot do that in its current state (no history to roll back to)."""


class RegistryWriteError(ArtifactError):
    """The registry's files cannot be written (a read-only or full volume, wrong ownership)."""


def _cannot_write(root: Path, exc: OSError) -> RegistryWriteError:
    return RegistryWriteError(f"cannot write the registry's state in {root} ({exc.strerror or exc})")


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold the writers' lock; a failed write inside is a :class:`RegistryWriteError`."""
    try:
        with files.locked(root / LOCK_FILE):
            yield
    except OSError as exc:
        raise _cannot_write(root, exc) from None


def _read_pointer(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryReadError(f"cannot read {path} ({exc})") from None
    try:
        return artifacts.check_name(text) if text else None
    except ArtifactError as exc:
        raise RegistryReadError(str(exc)) from None


def default_version(root: Path) -> str:
    """The version ``DEFAULT`` names (an :class:`ArtifactError` when there is none)."""
    return artifacts.default_version(Path(root))


def shadow_version(root: Path) -> str | None:
    """The version ``SHADOW`` names, or ``None``."""
    return _read_pointer(Path(root) / SHADOW_POINTER)


def pointers(root: Path) -> tuple[str | None, str | None]:
    """``(default, shadow)`` as the files say now; what every worker polls."""
    root = Path(root)
    return _read_pointer(root / artifacts.DEFAULT_POINTER), _read_pointer(root / SHADOW_POINTER)


def history(root: Path) -> list[dict]:
    """Earlier defaults, newest last: ``{"version", "replaced_at"}`` each."""
    try:
        entries = json.loads((Path(root) / HISTORY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise RegistryReadError(f"cannot read {Path(root) / HISTORY_FILE} ({exc})") from None
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("version"), str)]


def _write_history(root: Path, entries: list[dict]) -> None:
    files.write_atomic(root / HISTORY_FILE, json.dumps(entries[-HISTORY_LIMIT:], indent=1) + "\n")


Verifier = Callable[[str], object]


def _verify(root: Path, version: str, verifier: Verifier | None) -> None:
    """Run the verifier (default: :func:`~tagifai_api.ml.versions.verify`); a version that exists but
    fails is a :class:`VerificationError`."""
    try:
        if verifier is None:
            versions.verify(root, version)
        else:
            verifier(version)
    except (versions.UnknownVersionError, VerificationError):
        raise
    except ArtifactError as exc:
        raise VerificationError(str(exc)) from None


def set_default(root: Path, version: str, verifier: Verifier | None = None) -> tuple[str | None, str]:
    """Verify ``version``, then make it the default, keeping the one it replaces in the history.

    Args:
        verifier: called with the version before anything changes, and must raise
            :class:`ArtifactError` to refuse it (default: :func:`~tagifai_api.ml.versions.verify`). A web worker passes
            one that also keeps the loaded version, so the check is not wasted.

    Returns:
        ``(previous, new)`` defaults; they are equal when ``version`` already was the default.
    """
    root = Path(root)
    _verify(root, version, verifier)
    with _locked(root):
        previous = _read_pointer(root / artifacts.DEFAULT_POINTER)
        if previous == version:
            return previous, version
        if previous is not None:
            entries = history(root)
            entries.append({"version": previous, "replaced_at": _now()})
            _write_history(root, entries)
        files.write_atomic(root / artifacts.DEFAULT_POINTER, version + "\n")
    return previous, version


def save_version(root: Path, result, dataset_sha256: str, make_default: bool = True) -> ModelVersion:
    """Write a trained ``result`` as a new version (:func:`~tagifai_api.ml.artifacts.save`) and,
    with ``make_default``, make it the default."""
    saved = artifacts.save(Path(root), result, dataset_sha256)
    if make_default:
        # the files were just written and load() checked them: no second verification
        set_default(root, saved.version, verifier=lambda _: None)
    return saved


def rollback(root: Path, verifier: Verifier | None = None) -> tuple[str | None, str]:
    """Make the latest earlier default the default again (verified first), dropping it from the history.

    Raises:
        RegistryConflictError: there is no earlier default.
        ArtifactError: the earlier default fails verification; nothing changes.
    """
    root = Path(root)
    with _locked(root):
        current = _read_pointer(root / artifacts.DEFAULT_POINTER)
        entries = history(root)
        while entries and entries[-1]["version"] == current:  # a switch interrupted after the history write
            entries.pop()
        if not entries:
            raise RegistryConflictError("no earlier default to roll back to: the history is empty")
        target = entries[-1]["version"]
        _verify(root, target, verifier)
        entries.pop()
        _write_history(root, entries)
        files.write_atomic(root / artifacts.DEFAULT_POINTER, target + "\n")
    return current, target


def set_shadow(root: Path, version: str, verifier: Verifier | None = None) -> str | None:
    """Verify ``version`` and make it the shadow; returns the shadow it replaced."""
    root = Path(root)
    _verify(root, version, verifier)
    with _locked(root):
        previous = shadow_version(root)
        files.write_atomic(root / SHADOW_POINTER, version + "\n")
    return previous


def clear_shadow(root: Path) -> str | None:
    """Stop shadow scoring; returns the shadow it removed (``None`` when there was none)."""
    root = Path(root)
    with _locked(root):
        previous = shadow_version(root)
        try:
            (root / SHADOW_POINTER).unlink()
        except FileNotFoundError:
            pass
    return previous


def seed(root: Path, source: Path) -> list[str]:
    """Copy into ``root`` the versions of ``source`` it lacks, and make the source's default the
    default if ``root`` has none; for a fresh shared volume, from the versions an image was built with.

    Each version is copied whole to a temporary name and renamed into place, so a replica starting
    at the same time never sees half a version; an existing default is never changed.

    Returns:
        the versions copied.
    """
    root, source = Path(root), Path(source)
    try:
        root.mkdir(parents=True, exist_ok=True)
        copied = []
        for version in artifacts.list_versions(source):
            if (root / version).exists():
                continue
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
            try:
                shutil.copytree(source / version, tmp / version)
                os.rename(tmp / version, root / version)
                copied.append(version)
            except OSError:
                if not (root / version / artifacts.MANIFEST).is_file():  # not another replica's copy
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise _cannot_write(root, exc) from None
    with _locked(root):
        if _read_pointer(root / artifacts.DEFAULT_POINTER) is None:
            files.write_atomic(root / artifacts.DEFAULT_POINTER, default_version(source) + "\n")
    return copied


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
