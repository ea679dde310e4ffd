"""``python -m tagifai_api log export`` and ``feedback export``: the prediction log and the labelled
texts, as CSV or JSON Lines (by the output's extension), streamed, so any size fits."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import click

from tagifai_api import settings
from tagifai_api.store import open_store
from tagifai_api.store.database import LOG_COLUMNS

FEEDBACK_COLUMNS = ("text", "tag", "at", "source")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _time(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (2026-12-06 or 2026-12-06T10:00:00Z)") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def write_rows(path: Path, columns: tuple[str, ...], rows: Iterable[dict]) -> int:
    """Write ``rows`` to ``path``: JSON Lines for ``.jsonl``/``.ndjson``, else CSV; how many."""
    jsonl = path.suffix in (".jsonl", ".ndjson")
    if path.suffix not in (".jsonl", ".ndjson", ".csv"):
        raise click.BadParameter(f"{path}: the output must end in .csv, .jsonl or .ndjson", param_hint="--output")
    count = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = None if jsonl else csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        if writer is not None:
            writer.writeheader()
        for row in rows:
            row = {k: row.get(k) for k in columns}
            if jsonl:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                writer.writerow(row)
            count += 1
    return count


def _timed(rows: Iterator[dict]) -> Iterator[dict]:
    for row in rows:
        yield {**row, "at": _iso(row["at"])}


@click.group("log")
def log_group() -> None:
    """The prediction log (TAGIFAI_PREDICTION_LOG): what the service answered."""


@log_group.command("export")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A .csv, .jsonl or .ndjson file.")
@click.option("--since", default=None, help="From this time on (ISO 8601, UTC unless it says otherwise).")
@click.option("--until", default=None, help="Before this time (ISO 8601).")
@click.option("--version", default=None, help="Only the answers of this model version.")
def export_log(output: Path, since: str | None, until: str | None, version: str | None) -> None:
    """Write the logged predictions, oldest first."""
    store = open_store(settings.from_env())
    count = write_rows(output, LOG_COLUMNS, _timed(store.predictions(_time(since), _time(until), version)))
    click.echo(f"{count:,} predictions -> {output}", err=True)


@click.group("feedback")
def feedback_group() -> None:
    """Feedback: the corrections users sent (POST /feedback)."""


@feedback_group.command("export")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A .csv, .jsonl or .ndjson file.")
def export_feedback(output: Path) -> None:
    """Write the labelled texts (text, tag, time, source), oldest first: what retraining learns from.

    A correction of a prediction has its text only if the log kept it (TAGIFAI_PREDICTION_LOG=texts).
    """
    store = open_store(settings.from_env())
    count = write_rows(output, FEEDBACK_COLUMNS, _timed(store.labelled_texts()))
    click.echo(f"{count:,} labelled texts -> {output}", err=True)


COMMANDS = (log_group, feedback_group)
