"""What the retraining routes ask for: start a job, read one, promote the shadow; the views turn the
answers into responses."""

from __future__ import annotations

import os
from collections.abc import Mapping

from tagifai_api.retrain import jobs as job_runs
from tagifai_api.retrain.gate import Gate
from tagifai_api.retrain.promote import promote_if_better
from tagifai_api.serving.service import ModelService
from tagifai_api.store.jobs import Jobs


class NotWritableError(Exception):
    """The artifacts directory cannot take a new version here; nothing was started."""


class RetrainService:
    """Retraining for one app: its model service (the registry, the loaded versions) and its settings."""

    def __init__(self, service: ModelService, config: Mapping[str, object]) -> None:
        self.service = service
        self.config = config
        self.jobs = Jobs(service.registry.store)

    def start(self, shadow: bool, key_name: str | None) -> dict:
        """Take the retraining lease for a new job and start its process; the job (queued).

        Raises:
            NotWritableError: a candidate could not be written where this service reads versions.
            JobRunningError: a retraining is running already, here or on another replica.
        """
        root = self.service.artifacts_dir
        if not os.access(root, os.W_OK | os.X_OK):
            raise NotWritableError(f"The model versions directory {root} is read-only here, so a candidate cannot be "
                                   "written; run `python -m tagifai_api retrain` where it is writable.")
        job = self.jobs.start(job_runs.KIND, {"shadow": shadow}, key_name)
        try:
            job_runs.spawn(job["id"], self.config)
        except OSError as exc:
            self.jobs.finish(job["id"], job_runs.KIND, error=f"the job's process could not start: {exc}")
            raise
        return job

    def job(self, job_id: str) -> dict | None:
        return self.jobs.get(job_id)

    def recent(self) -> list[dict]:
        """The newest 20 retraining jobs, newest first."""
        return self.jobs.recent(job_runs.KIND)

    def promote_shadow(self, key_name: str | None) -> dict:
        """``promote --if-better`` with this worker's loaded versions; the decision."""
        service = self.service

        def promote(version: str, expect: str, reason: str) -> None:
            service.promote(version, expect, key_name, reason)

        return promote_if_better(service.registry.store, service.artifacts_dir, Gate.from_settings(self.config),
                                 lambda version: service.get(version).predictor, promote, key_name)
