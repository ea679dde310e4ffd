"""The model registry: which version is the default, the defaults it replaced, and the shadow.

That state is in the store (:class:`~tagifai_api.store.database.Store`), so every worker of every
replica sharing it agrees; the versions themselves stay immutable directories under the artifacts
directory (checksummed, read-only, safe on any shared volume). Plain Python: the CLI and every web
worker go through :class:`Registry`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tagifai_api.ml import artifacts, versions
from tagifai_api.ml.artifacts import ArtifactError, ModelVersion
from tagifai_api.store.database import ConflictError, Store

#: no earlier default to roll back to
RegistryConflictError = ConflictError

Verifier = Callable[[str], object]


class NoDefaultError(ArtifactError):
    """The store records no default version yet."""


class VerificationError(ArtifactError):
    """A version failed the verification a switch makes first; nothing changed."""


class Registry:
    """The registry of one artifacts directory, its state in ``store``.

    Args:
        store: where the pointers, history and audit log live.
        root: the artifacts directory holding the versions.
    """

    def __init__(self, store: Store, root: str | Path) -> None:
        self.store = store
        self.root = Path(root)
        self._snapshot = f"pointers-{self.root.resolve()}"

    def remember(self, default: str | None, shadow: str | None) -> None:
        """Keep the pointers as read now on this host (see :meth:`Store.remember`)."""
        self.store.remember(self._snapshot, {"default": default, "shadow": shadow})

    def last_known(self) -> tuple[str | None, str | None] | None:
        """The pointers a worker of this host last read from the store, if any did."""
        data = self.store.last_known(self._snapshot)
        try:
            return data["default"], data["shadow"]
        except (KeyError, TypeError):
            return None

    def pointers(self) -> tuple[str | None, str | None]:
        """``(default, shadow)`` as the store says now; what every worker polls."""
        return self.store.pointers()

    def default_version(self) -> str:
        """The default version's name; :class:`NoDefaultError` when there is none."""
        default = self.store.pointers()[0]
        if default is None:
            raise NoDefaultError(f"no default model in the state store {self.store.describe()}: train one with "
                                 "`python -m tagifai_api train`")
        return default

    def resolve(self, version: str) -> str:
        """``version``, or the default's name for ``"default"``."""
        return self.default_version() if version == "default" else version

    def shadow_version(self) -> str | None:
        return self.store.pointers()[1]

    def history(self) -> list[dict]:
        """Earlier defaults, newest last: ``{"version", "replaced_at"}`` each."""
        return self.store.history()

    def _verifier(self, verifier: Verifier | None) -> Verifier:
        """``verifier`` (default: :func:`~tagifai_api.ml.versions.verify`), with a failure of a version
        that exists as a :class:`VerificationError`."""

        def verify(version: str) -> None:
            try:
                if verifier is None:
                    versions.verify(self.root, version)
                else:
                    verifier(version)
            except (versions.UnknownVersionError, VerificationError):
                raise
            except ArtifactError as exc:
                raise VerificationError(str(exc)) from None

        return verify

    def set_default(self, version: str, verifier: Verifier | None = None, key_name: str | None = None,
                    reason: str | None = None) -> tuple[str | None, str]:
        """Verify ``version``, then make it the default, keeping the one it replaces in the history.

        Args:
            verifier: called with the version before anything changes; raises
                :class:`ArtifactError` to refuse it. A web worker passes one that also keeps the
                loaded version, so the check is not wasted.
            key_name, reason: who asked and why, for the audit log.

        Returns:
            ``(previous, new)`` defaults; they are equal when ``version`` already was the default.
        """
        return self.store.set_default(version, self._verifier(verifier), key_name, reason)

    def promote(self, version: str, expect: str | None, verifier: Verifier | None = None,
                key_name: str | None = None, reason: str | None = None) -> tuple[str | None, str]:
        """Verify ``version`` and make it the default while ``expect`` still is (see :meth:`Store.promote`)."""
        return self.store.promote(version, self._verifier(verifier), expect, key_name, reason)

    def rollback(self, verifier: Verifier | None = None, key_name: str | None = None,
                 reason: str | None = None, **only_if) -> tuple[str | None, str]:
        """Make the latest earlier default the default again (verified first), dropping it from the history.

        ``only_if``: ``expect`` and ``action``, as :meth:`Store.rollback` takes them.

        Raises:
            RegistryConflictError: there is no earlier default.
            VerificationError: the earlier default fails verification; nothing changes.
        """
        return self.store.rollback(self._verifier(verifier), key_name, reason, **only_if)

    def set_shadow(self, version: str, verifier: Verifier | None = None, key_name: str | None = None,
                   reason: str | None = None, action: str = "set_shadow") -> str | None:
        """Verify ``version`` and make it the shadow; returns the shadow it replaced."""
        return self.store.set_shadow(version, self._verifier(verifier), key_name, reason, action=action)

    def clear_shadow(self, key_name: str | None = None, reason: str | None = None) -> str | None:
        """Stop shadow scoring; returns the shadow it removed (``None`` when there was none)."""
        return self.store.clear_shadow(key_name, reason)

    def save_version(self, result, dataset_sha256: str, make_default: bool = True,
                     lineage: dict | None = None) -> ModelVersion:
        """Write a trained ``result`` as a new version (:func:`~tagifai_api.ml.artifacts.save`) and,
        with ``make_default``, make it the default."""
        saved = artifacts.save(self.root, result, dataset_sha256, lineage)
        if make_default:
            # the files were just written and load() checked them: no second verification
            self.set_default(saved.version, verifier=lambda _: None, reason="trained")
        return saved

    def seed(self, source: Path) -> list[str]:
        """Copy into the artifacts directory the versions of ``source`` it lacks, and make the newest
        of them the default if the store has none; for a fresh volume, from the versions an image
        was built with.

        Each version is copied whole to a temporary name and renamed into place, so a replica
        starting at the same time never sees half a version; an existing default is never changed.

        Returns:
            the versions copied.
        """
        root, source = self.root, Path(source)
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
        newest = artifacts.list_versions(source)
        if self.store.pointers()[0] is None and newest:
            self.set_default(newest[-1], verifier=lambda _: None, reason=f"seeded from {source}")
        return copied
