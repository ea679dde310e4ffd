"""``python -m tagifai_api retrain`` and ``promote --if-better``: the loop from the command line (a
CronJob runs both nightly), and the process a ``POST /models/retrain`` job runs in."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import click

from tagifai_api import settings
from tagifai_api.ml import artifacts
from tagifai_api.ml.predict import Predictor
from tagifai_api.registry.cli import open_registry
from tagifai_api.retrain import jobs as job_runs
from tagifai_api.retrain.gate import Gate
from tagifai_api.retrain.promote import NothingToPromoteError, promote_if_better
from tagifai_api.store.database import StoreError
from tagifai_api.store.jobs import Jobs

log = logging.getLogger("tagifai_api.retrain")


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt  # recorded as the job's error, its lease released


@click.command()
@click.option("--shadow", is_flag=True, help="A candidate that passes the gate becomes the shadow, not the default.")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The labelled dataset  [default: TAGIFAI_RETRAIN_DATA]")
@click.option("--holdout", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="Share of the feedback (the newest) held out  [default: TAGIFAI_RETRAIN_HOLDOUT]")
@click.option("--margin", type=float, default=None, help="[default: TAGIFAI_GATE_MARGIN]")
@click.option("--tolerance", type=float, default=None, help="[default: TAGIFAI_GATE_TOLERANCE]")
@click.option("--min-held-out", type=click.IntRange(min=0), default=None, help="[default: TAGIFAI_GATE_MIN_HELD_OUT]")
@click.option("--job", "job_id", default=None, help="Run the job POST /models/retrain started (its options apply).")
@click.option("--nice", type=click.IntRange(0, 19), default=0, show_default=True,
              help="Lower this process's scheduling priority by this much (serving first on a shared host).")
@click.pass_obj
def retrain(obj: dict, shadow: bool, data_path: Path | None, holdout: float | None, margin: float | None,
            tolerance: float | None, min_held_out: int | None, job_id: str | None, nice: int) -> None:
    """Train a candidate on the dataset plus the feedback, judge it against the default, and promote it
    (or with --shadow, shadow it) if it passes the gate; otherwise it stays a registered candidate.

    One retraining runs at a time across every replica sharing the store; the decision and its numbers
    are printed and recorded in the audit log (GET /models/history).
    """
    if nice:
        job_runs.lower_priority(os.getpid(), nice)
    values = settings.from_env()
    data = data_path or Path(str(values["RETRAIN_DATA"]))
    registry = open_registry(obj)
    jobs = Jobs(registry.store)
    if job_id is None:
        if not data.is_file():
            raise click.BadParameter(f"{data} is not a file of labelled projects", param_hint="TAGIFAI_RETRAIN_DATA")
        job = jobs.start(job_runs.KIND, {"shadow": shadow})  # JobRunningError: one line, exit 2
    else:
        job = jobs.get(job_id)
        if job is None:
            raise click.BadParameter(f"no job {job_id!r}", param_hint="--job")
        shadow = bool(job["params"].get("shadow"))
        from tagifai_api.telemetry import logs

        logs.configure(str(values["LOG_LEVEL"]))  # beside the server's own lines, in their format
    gate = Gate.from_settings(values, margin=margin, tolerance=tolerance, min_held_out=min_held_out)
    split = float(values["RETRAIN_HOLDOUT"]) if holdout is None else holdout

    def work(progress) -> dict:
        from tagifai_api.retrain.candidate import retrain as run_retrain

        return run_retrain(registry, data, gate, split, shadow=shadow, key_name=job["key_name"], job_id=job["id"],
                           progress=progress)

    previous = signal.signal(signal.SIGTERM, _interrupted)
    try:
        result = job_runs.run(jobs, job["id"], work)
    except (StoreError, KeyboardInterrupt):
        raise  # one line each from the command line's entry point
    except Exception as exc:  # noqa: BLE001 - recorded as the job's error; one line here too
        raise click.ClickException(f"retraining failed (job {job['id']}): {type(exc).__name__}: {exc}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if job_id is None:
        _echo_json({"job": job["id"], **result})


@click.command()
@click.option("--if-better", is_flag=True,
              help="Promote the shadow only if it scored enough live texts and passes the gate (required: to "
                   "switch unconditionally, use set-default).")
@click.option("--margin", type=float, default=None, help="[default: TAGIFAI_GATE_MARGIN]")
@click.option("--tolerance", type=float, default=None, help="[default: TAGIFAI_GATE_TOLERANCE]")
@click.option("--min-held-out", type=click.IntRange(min=0), default=None, help="[default: TAGIFAI_GATE_MIN_HELD_OUT]")
@click.option("--min-shadow-texts", type=click.IntRange(min=0), default=None,
              help="[default: TAGIFAI_SHADOW_MIN_TEXTS]")
@click.pass_obj
def promote(obj: dict, if_better: bool, margin: float | None, tolerance: float | None, min_held_out: int | None,
            min_shadow_texts: int | None) -> None:
    """Promote the shadowed candidate to the default if it is better; print the decision.

    Exit status 0 whether it was promoted or kept (the audit log says why); with no shadow made by
    retraining there is nothing to judge, which is said and is no error either.
    """
    if not if_better:
        raise click.UsageError("promote needs --if-better; to switch the default unconditionally, use set-default")
    registry = open_registry(obj)
    gate = Gate.from_settings(settings.from_env(), margin=margin, tolerance=tolerance, min_held_out=min_held_out,
                              min_shadow_texts=min_shadow_texts)

    def predictor(version: str) -> Predictor:
        return Predictor(artifacts.load(registry.root, version))

    def switch(version: str, expect: str, reason: str) -> None:
        registry.promote(version, expect, reason=reason)

    try:
        decision = promote_if_better(registry.store, registry.root, gate, predictor, switch)
    except NothingToPromoteError as exc:
        _echo_json({"decision": "none", "reason": str(exc)})
        return
    _echo_json(decision)


COMMANDS = (retrain, promote)
