"""The progress file beside an output: what has been committed, so a run can be resumed.

After each chunk the output and errors files are flushed and fsync'ed, and only then is this small
JSON file replaced (write, fsync, rename, fsync the directory). Whatever the moment of a crash, the
file therefore names byte offsets that are on disk; bytes past them belong to a chunk that was never
committed and a resumed run truncates them away.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tagifai_api.store import files

FORMAT = 1


class JournalError(Exception):
    """The progress file is unreadable or does not match the run asked for."""


@dataclass
class Committed:
    """How far an output is committed: input rows consumed, file sizes and counts."""

    rows: int = 0
    output_bytes: int = 0
    errors_bytes: int = 0
    scored: int = 0
    rejected: int = 0
    position: int | None = None  # bytes of the stored input read, for the progress bar


def path_for(output: Path) -> Path:
    """``OUTPUT.progress``."""
    return output.with_name(output.name + ".progress")


def write(path: Path, identity: dict, committed: Committed) -> None:
    """Replace the progress file atomically and durably."""
    body = json.dumps({"format": FORMAT, "run": identity, "committed": asdict(committed)}, sort_keys=True)
    files.write_atomic(path, body + "\n")


def read(path: Path) -> tuple[dict, Committed]:
    """The run identity and committed state recorded in ``path``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise JournalError(f"{path}: unknown progress format {doc.get('format')!r}")
        return doc["run"], Committed(**doc["committed"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JournalError(f"{path} cannot be read ({exc}); use --force to start over") from None


def differences(recorded: dict, now: dict) -> list[str]:
    """Names of the settings in which two run identities differ."""
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))


def remove(path: Path) -> None:
    """Delete the progress file (the run is complete)."""
    path.unlink(missing_ok=True)
    for tmp in files.leftovers(path):
        tmp.unlink(missing_ok=True)
    files.fsync_dir(path.parent)
