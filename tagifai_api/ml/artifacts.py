"""Versioned model artifacts: writing a version, loading it with verification.

A version directory holds the fitted pipeline (``model.joblib``), its numpy export
(``model.npz``, what workers serve), ``args.json``, ``performance.json``, ``labels.json``, the
reference profile of the drift statistics (``profile.json``; versions written before it have none)
and ``manifest.json`` with every file's sha256 and the library versions that wrote them. Nothing is
unpickled before its checksum and the scikit-learn version have been checked.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from tagifai_api.ml import profile as profiles
from tagifai_api.ml.compiled import CompiledModel

FORMAT = 1
MANIFEST = "manifest.json"
PIPELINE_FILE = "model.joblib"
COMPILED_FILE = "model.npz"
JSON_FILES = ("args.json", "performance.json", "labels.json")
#: optional: a version written before profiles has none (its profile is then kept in the state store)
PROFILE_FILE = "profile.json"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactError(Exception):
    """A model version is missing, damaged, or was written by an incompatible library."""


@dataclass(frozen=True)
class ModelVersion:
    """A verified version: its metadata, and the compiled model when asked for."""

    version: str
    path: Path
    manifest: dict
    args: dict
    performance: dict
    labels: list[str]
    compiled: CompiledModel | None = None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sklearn_version() -> str:
    """The installed scikit-learn's version, read without importing it."""
    return metadata.version("scikit-learn")


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def new_version_name(now: datetime | None = None) -> str:
    """A sortable, unique name: UTC time to the microsecond."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("v%Y%m%dT%H%M%S%fZ")


def save(root: Path, result, dataset_sha256: str, lineage: dict | None = None) -> ModelVersion:
    """Write ``result`` (a :class:`~tagifai_api.ml.train.TrainResult`) as a new version under ``root``.

    ``lineage`` (a retrained version's parent, data checksums and evaluations) goes into the manifest,
    which the checksums of the other files make as trustworthy as they are.

    The version is written to a temporary directory and renamed into place, so a reader never
    sees half a version. Making it the default is the registry's business
    (:func:`tagifai_api.store.registry.save_version`).
    """
    import joblib
    import numpy as np
    import sklearn

    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    version = new_version_name(now)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    joblib.dump(result.pipeline, tmp / PIPELINE_FILE, compress=3)
    result.compiled.save(tmp / COMPILED_FILE)
    _write_json(tmp / "args.json", result.args)
    _write_json(tmp / "performance.json", result.performance)
    _write_json(tmp / "labels.json", result.labels)
    files = [PIPELINE_FILE, COMPILED_FILE, *JSON_FILES]
    if getattr(result, "profile", None) is not None:
        _write_json(tmp / PROFILE_FILE, result.profile)
        files.append(PROFILE_FILE)
    manifest = {
        "format": FORMAT,
        "version": version,
        "created_at": now.isoformat(timespec="seconds"),
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "dataset_sha256": dataset_sha256,
        "files": {name: sha256_file(tmp / name) for name in files},
    }
    if lineage is not None:
        manifest["lineage"] = lineage
    _write_json(tmp / MANIFEST, manifest)
    # mkdtemp makes the directory private (0700): a service running as another user, such as the
    # Docker image's, must be able to read the version
    tmp.chmod(0o755)
    final = root / version
    tmp.rename(final)
    return load(root, version)


def check_name(version: str) -> str:
    """Refuse names that could step outside the artifacts directory."""
    if not _VERSION_RE.match(version):
        raise ArtifactError(f"invalid model version name {version!r}")
    return version


def list_versions(root: Path) -> list[str]:
    """Every version directory under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def _verified_manifest(path: Path, files: tuple[str, ...]) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {MANIFEST} is missing; this is not a model version") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read {MANIFEST} ({exc.strerror or exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ArtifactError(f"{path}: {MANIFEST} does not describe a model version (no file list)")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: artifact format {manifest.get('format')!r}, this code reads {FORMAT}")
    made_with = str(manifest.get("sklearn_version", "unknown"))
    installed = sklearn_version()
    if _minor(made_with) != _minor(installed):
        raise ArtifactError(
            f"{path}: written by scikit-learn {made_with}, but {installed} is installed; "
            "retrain with `python -m tagifai_api train` or install the matching version"
        )
    expected = manifest.get("files", {})
    for name in files:
        file = path / name
        if name not in expected:
            raise ArtifactError(f"{path}: {name} is not listed in {MANIFEST}")
        if not file.is_file():
            raise ArtifactError(f"{path}: {name} is missing")
        try:
            digest = sha256_file(file)
        except OSError as exc:
            raise ArtifactError(f"{path}: cannot read {name} ({exc.strerror or exc})") from None
        if digest != expected[name]:
            raise ArtifactError(f"{path}: {name} does not match its sha256 in {MANIFEST}; it was altered or damaged")
    return manifest


def load(root: Path, version: str, *, compiled: bool = True) -> ModelVersion:
    """Verify and load a version's metadata and, with ``compiled``, its numpy model.

    Args:
        root: the artifacts directory.
        version: a version name (the registry says which one is the default).
        compiled: also load ``model.npz``.

    Raises:
        ArtifactError: with a sentence a person can act on.
    """
    root = Path(root)
    name = check_name(version)
    path = root / name
    if not path.is_dir():
        raise ArtifactError(f"no model version {name!r} in {root}")
    files = (*JSON_FILES, COMPILED_FILE) if compiled else JSON_FILES
    manifest = _verified_manifest(path, files)
    try:
        meta = {n: json.loads((path / n).read_text(encoding="utf-8")) for n in JSON_FILES}
        model = CompiledModel.load(path / COMPILED_FILE) if compiled else None
    except (ValueError, KeyError, OSError, TypeError, IndexError) as exc:
        raise ArtifactError(f"{path}: cannot read the model files ({exc})") from None
    return ModelVersion(
        version=name,
        path=path,
        manifest=manifest,
        args=meta["args.json"],
        performance=meta["performance.json"],
        labels=meta["labels.json"],
        compiled=model,
    )


def verify_files(version: ModelVersion) -> None:
    """Check every file the manifest lists (the pipeline too, which serving never reads)."""
    _verified_manifest(version.path, tuple(dict.fromkeys((*JSON_FILES, COMPILED_FILE, PIPELINE_FILE,
                                                         *version.manifest["files"]))))


def load_profile(version: ModelVersion) -> dict | None:
    """The reference profile written with ``version`` (after checking its sha256), or None when the
    version was written without one.

    Raises:
        ArtifactError: the file is listed but missing, altered or not a profile.
    """
    if PROFILE_FILE not in version.manifest.get("files", {}):
        return None
    _verified_manifest(version.path, (PROFILE_FILE,))
    try:
        return profiles.check(json.loads((version.path / PROFILE_FILE).read_text(encoding="utf-8")))
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{version.path}: cannot read {PROFILE_FILE} ({exc})") from None


def load_pipeline(version: ModelVersion):
    """Unpickle the scikit-learn pipeline of a loaded version, after checking its sha256."""
    import joblib

    _verified_manifest(version.path, (PIPELINE_FILE,))
    return joblib.load(version.path / PIPELINE_FILE)
