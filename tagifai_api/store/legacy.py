"""The files the state lived in before the store, imported into an empty store once.

An install from before the store kept the registry's pointers beside the versions
(``artifacts/DEFAULT``, ``DEFAULT.history.json``, ``SHADOW``) and the API keys in a JSON file
(``TAGIFAI_API_KEYS_FILE``, hashes only). On the first start with an empty store they are read,
checked and written to it in one transaction; the files are left where they are (nothing is
lost), and later starts, finding the store in use, read them no more.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from tagifai_api.store.database import Store

log = logging.getLogger("tagifai_api.store")

DEFAULT_FILE = "DEFAULT"
HISTORY_FILE = "DEFAULT.history.json"
SHADOW_FILE = "SHADOW"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ROLES = ("predict", "admin")


class LegacyFileError(ValueError):
    """An old state file that cannot be imported; the message names it and says why, and ``setting``
    is the setting that names the file (or its directory)."""

    def __init__(self, message: str, setting: str = "TAGIFAI_ARTIFACTS_DIR") -> None:
        super().__init__(message)
        self.setting = setting


def _pointer(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LegacyFileError(f"cannot read {path} ({exc})") from None
    if text and not _VERSION.match(text):
        raise LegacyFileError(f"{path} names an invalid model version {text!r}")
    return text or None


def _history(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise LegacyFileError(f"cannot read {path} ({exc})") from None
    if not isinstance(entries, list):
        raise LegacyFileError(f"{path} is not a list of earlier defaults")
    return [{"version": e["version"], "replaced_at": str(e.get("replaced_at") or "")} for e in entries
            if isinstance(e, dict) and isinstance(e.get("version"), str) and _VERSION.match(e["version"])]


def read_keys_file(path: Path) -> list[dict]:
    """The keys of an old keys file (``{"keys": [{name, role, created_at, sha256}, ...]}``); none
    when there is no file. Raises :class:`LegacyFileError` for anything it cannot import whole."""
    def refuse(message: str) -> LegacyFileError:
        return LegacyFileError(message, setting="TAGIFAI_API_KEYS_FILE")

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise refuse(f"keys file {path} cannot be read: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise refuse(f"keys file {path} is not valid JSON: {exc}") from None
    except RecursionError:  # the standard parser recurses once per nesting level
        raise refuse(f"keys file {path} is not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise refuse(f'keys file {path} must be a JSON object with a "keys" list')
    keys, names = [], set()
    for i, entry in enumerate(doc["keys"]):
        where = f"keys file {path}, entry {i}"
        if not isinstance(entry, dict) or set(entry) != {"name", "role", "created_at", "sha256"} \
                or not all(isinstance(v, str) for v in entry.values()):
            raise refuse(f"{where}: expected exactly the strings name, role, created_at and sha256")
        if not _NAME.match(entry["name"]):
            raise refuse(f"{where}: invalid name {entry['name']!r}: 1-64 of letters, digits, '.', '_', '-', "
                         "starting with a letter or digit")
        if entry["role"] not in _ROLES:
            raise refuse(f"{where}: invalid role {entry['role']!r}: expected one of {', '.join(_ROLES)}")
        if not _HEX64.match(entry["sha256"]):
            raise refuse(f"{where}: sha256 must be 64 lower-case hex digits")
        if entry["name"] in names:
            raise refuse(f"{where}: duplicate name {entry['name']!r}")
        names.add(entry["name"])
        keys.append(dict(entry))
    return keys


def import_files(store: Store, artifacts_dir: Path, keys_file: Path) -> bool:
    """Import the old files into ``store`` if it is empty and there are any; True when it did.

    Raises:
        LegacyFileError: an old file exists but cannot be imported (nothing is written).
    """
    if not store.is_empty():  # imported before, or in use: the old files are not even read
        return False
    root = Path(artifacts_dir)
    default, shadow = _pointer(root / DEFAULT_FILE), _pointer(root / SHADOW_FILE)
    history = _history(root / HISTORY_FILE)
    keys = read_keys_file(Path(keys_file))
    if default is None and shadow is None and not history and not keys:
        return False
    store.import_state(default, shadow, history, keys)
    log.info("imported the state files into the store %s: default %s, shadow %s, %d history entries, %d keys "
             "(the files are left as they were and are no longer read)",
             store.describe(), default, shadow, len(history), len(keys))
    return True
