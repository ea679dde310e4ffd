"""Which model versions exist, which are sound, and which can serve: checksums, a warm-up
prediction, and a listing of every version with why a broken one is broken. Model code only."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from tagifai_api.ml import artifacts
from tagifai_api.ml.artifacts import ArtifactError, ModelVersion
from tagifai_api.ml.predict import Predictor

WARM_UP_TEXT = "warm-up: transfer learning with transformers for text classification"


class UnknownVersionError(ArtifactError):
    """No version of that name exists under the artifacts directory."""

    def __init__(self, version: str, valid: list[str]) -> None:
        self.version = version
        self.valid = valid
        super().__init__(f"unknown model version {version!r}; valid versions: {', '.join(valid) or 'none'}")


class InvalidVersionError(ArtifactError):
    """A version that exists but fails its checks; ``reason`` says why."""

    def __init__(self, version: str, reason: str) -> None:
        self.version = version
        self.reason = reason
        super().__init__(reason)


def require_known(root: Path, version: str) -> str:
    """``version`` if a directory of that name with a manifest exists, else :class:`UnknownVersionError`."""
    root = Path(root)
    try:
        artifacts.check_name(version)
        known = (root / version / artifacts.MANIFEST).is_file()
    except ArtifactError:
        known = False
    if not known:
        raise UnknownVersionError(version, [v["version"] for v in describe_all(root) if v["valid"]])
    return version


def metadata(root: Path, version: str) -> ModelVersion:
    """A version's manifest, args, performance and labels (their files checked against the manifest),
    without its model: what a quality report or a tag check needs costs no load, and cannot push a
    loaded version out nor fail on damaged model files.

    Raises:
        UnknownVersionError: there is no such version.
        InvalidVersionError: those files are missing, damaged or written by another scikit-learn.
    """
    root = Path(root)
    require_known(root, version)
    try:
        return artifacts.load(root, version, compiled=False)
    except ArtifactError as exc:
        raise InvalidVersionError(version, str(exc)) from None


def verify(root: Path, version: str, *, every_file: bool = True) -> tuple[ModelVersion, Predictor]:
    """Check the files of ``version`` against their sha256, load it and make one warm-up prediction.

    Args:
        every_file: also check the files serving never reads (the scikit-learn pipeline): before
            a version becomes the default or the shadow, yes; when a worker loads a version to
            serve it, the files it reads are enough (and half the work).

    Raises:
        UnknownVersionError: there is no such version.
        ArtifactError: it exists but cannot be served; the message says why.
    """
    root = Path(root)
    require_known(root, version)
    model = artifacts.load(root, version)
    if every_file:
        artifacts.verify_files(model)
    try:
        predictor = Predictor(model)
        predictor.predict([WARM_UP_TEXT])
    except Exception as exc:  # noqa: BLE001 - whatever breaks the warm-up makes the version unservable
        raise ArtifactError(f"{model.path}: the warm-up prediction failed ({type(exc).__name__}: {exc})") from None
    return model, predictor



# validity of each version, remembered while none of its files changes (hashing them is the cost)
_checked: dict[Path, tuple[tuple, dict]] = {}
_checked_lock = threading.Lock()


def _signature(path: Path) -> tuple:
    out = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        st = entry.stat()
        out.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def _summary(root: Path, version: str) -> dict:
    """A version's listing entry: its metadata when sound, else ``valid: false`` and the reason."""
    path = root / version
    try:
        signature = _signature(path)
    except OSError as exc:
        return {"version": version, "valid": False, "reason": f"cannot read {path} ({exc.strerror or exc})"}
    with _checked_lock:
        cached = _checked.get(path)
    if cached is not None and cached[0] == signature:
        return dict(cached[1])
    try:
        model = artifacts.load(root, version, compiled=False)
        artifacts.verify_files(model)
    except ArtifactError as exc:
        entry = {"version": version, "valid": False, "reason": str(exc)}
        try:
            entry["created_at"] = json.loads((path / artifacts.MANIFEST).read_text(encoding="utf-8"))["created_at"]
        except Exception:  # noqa: BLE001 - best effort: the reason already says what is wrong
            pass
    else:
        manifest, overall = model.manifest, model.performance.get("overall", {})
        entry = {
            "version": version,
            "valid": True,
            "created_at": manifest.get("created_at"),
            "metrics": {k: overall.get(k) for k in ("f1", "precision", "recall")},
            "sklearn_version": manifest.get("sklearn_version"),
            "numpy_version": manifest.get("numpy_version"),
            "dataset_sha256": manifest.get("dataset_sha256"),
        }
    with _checked_lock:
        _checked[path] = (signature, entry)
    return dict(entry)


def describe_all(root: Path) -> list[dict]:
    """Every version under ``root``, newest first (names sort by creation time), sound or not."""
    root = Path(root)
    return [_summary(root, v) for v in reversed(artifacts.list_versions(root))]


def describe(root: Path, version: str) -> dict:
    """One sound version in full: its listing entry, manifest, args and performance, and its lineage
    (None for a version not made by retraining).

    Raises:
        UnknownVersionError: there is no such version.
        InvalidVersionError: it fails its checks (as :func:`verify`, without the warm-up).
    """
    root = Path(root)
    require_known(root, version)
    try:
        model = artifacts.load(root, version, compiled=False)
        artifacts.verify_files(model)
    except ArtifactError as exc:
        raise InvalidVersionError(version, str(exc)) from None
    return {**_summary(root, version), "manifest": model.manifest, "args": model.args,
            "performance": model.performance, "labels": model.labels,
            "lineage": model.manifest.get("lineage")}
