"""Running a retraining as a job: started in a process of its own (never in a worker's request thread,
never a fork of a worker and its threads: a fresh ``python -m tagifai_api retrain --job ID``), its
lease renewed while it works, its progress and result in the store for ``GET /jobs/<id>``."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from tagifai_api import settings
from tagifai_api.store.jobs import LEASE_S, Jobs, LeaseLostError

log = logging.getLogger(__name__)

KIND = "retrain"
#: how often a running job renews its lease (well inside :data:`LEASE_S`)
RENEW_EVERY_S = 5.0


def _env_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def child_env(config: Mapping[str, object]) -> dict[str, str]:
    """The environment of a job's process: the starting app's settings as ``TAGIFAI_*`` variables (they
    may come from ``create_app``'s overrides, not the environment), without the metrics directory of
    the server's workers and without a schema upgrade (the server's master did it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(settings.ENV_PREFIX)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    for key in settings.SETTINGS:
        if key in config:
            env[settings.ENV_PREFIX + key] = _env_value(config[key])
    env[settings.ENV_PREFIX + "STORE_UPGRADE"] = "false"
    return env


def spawn(job_id: str, config: Mapping[str, object]) -> subprocess.Popen:
    """Start the job's process; a thread of this process waits for it, so it leaves no zombie. It runs
    in a session of its own: a worker recycled meanwhile does not take it down."""
    nice = min(max(int(config["RETRAIN_NICE"]), 0), 19)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tagifai_api", "retrain", "--job", job_id, "--nice", str(nice)],
        cwd=settings.ROOT, env=child_env(config), stdin=subprocess.DEVNULL, start_new_session=True)
    if nice:
        lower_priority(proc.pid, nice)  # now, not once its imports are done (it does it again itself)
    threading.Thread(target=proc.wait, name=f"tagifai-job-{job_id[:8]}", daemon=True).start()
    log.info("retrain job %s started in pid %d", job_id, proc.pid, extra={"event": "job_started", "job": job_id})
    return proc


def lower_priority(pid: int, nice: int) -> None:
    """Yield the CPU to serving. Linux schedules each session as a group first (autogroup) and applies a
    process's nice value only within its group, so a job in a session of its own lowers its group's
    priority too. Best effort: the process may have ended, and there may be no autogroup."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        pass


class Heartbeat:
    """Renews a job's lease every :data:`RENEW_EVERY_S` in a thread and on every progress report.

    Once the lease is lost (this process was stalled longer than the lease, and another job took it
    over), :meth:`progress` raises :class:`LeaseLostError`, so the job stops before it changes anything.
    """

    def __init__(self, jobs: Jobs, job_id: str, lease_s: float = LEASE_S, every_s: float = RENEW_EVERY_S) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.lease_s = lease_s
        self.every_s = every_s
        self.lost: LeaseLostError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tagifai-job-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.jobs.renew(self.job_id, KIND, self.lease_s, state="running", stage="starting", progress=0.0,
                        runner=f"{socket.gethostname()}:{os.getpid()}")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.jobs.renew(self.job_id, KIND, self.lease_s)
            except LeaseLostError as exc:
                self.lost = exc
                return
            except Exception as exc:  # noqa: BLE001 - a store blip: the lease outlives a few missed renewals
                log.warning("job %s: renewing its lease failed (%s)", self.job_id, exc)

    def progress(self, stage: str, fraction: float) -> None:
        """Record the stage; raises :class:`LeaseLostError` if the job may no longer go on."""
        if self.lost is not None:
            raise self.lost
        self.jobs.renew(self.job_id, KIND, self.lease_s, stage=stage, progress=fraction)


def run(jobs: Jobs, job_id: str, work: Callable[[Callable[[str, float], None]], dict],
        lease_s: float = LEASE_S) -> dict:
    """Run ``work(progress)`` as job ``job_id`` (whose lease was taken when it was started) and record
    its result or its error; the result.

    Raises:
        LeaseLostError: the job lost its lease (it is recorded failed by whoever took it over).
        Exception: whatever ``work`` raised, after it was recorded as the job's error.
    """
    with Heartbeat(jobs, job_id, lease_s) as heartbeat:
        try:
            result = work(heartbeat.progress)
        except LeaseLostError:
            log.error("job %s lost its lease and stopped without changing anything", job_id)
            raise
        except BaseException as exc:
            message = str(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
            jobs.finish(job_id, KIND, error=f"{type(exc).__name__}: {message}")
            raise
    jobs.finish(job_id, KIND, result=result)
    return result
