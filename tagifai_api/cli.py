"""Command line: train, evaluate, predict and score; the registry's and the keys' commands join from
their packages (no web stack needed)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path

import click

from tagifai_api import settings
from tagifai_api.auth.cli import keys
from tagifai_api.auth.keys import KeyStoreError
from tagifai_api.ml import artifacts
from tagifai_api.store.database import StoreError
from tagifai_api.store.legacy import LegacyFileError
from tagifai_api.feedback import cli as feedback_cli
from tagifai_api.monitoring import cli as drift_cli
from tagifai_api.registry import cli as registry_cli
from tagifai_api.retrain import cli as retrain_cli

log = logging.getLogger("tagifai_api.cli")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # Alembic narrates every schema check at INFO (its plugins, its context); the store logs the one
    # line that matters, an upgrade, itself
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


#: commands that need model versions to exist (train and ensure-model create the directory)
_READS_ARTIFACTS = frozenset({"evaluate", "predict", "versions", "set-default", "rollback", "score", "drift",
                              "retrain", "promote"})


def _named(obj: dict, version: str) -> str:
    """``version``, or for ``default`` the one the state store records: a named version needs no
    store, so it can be used while the store is down."""
    return registry_cli.open_registry(obj).default_version() if version == "default" else version


@click.group()
@click.option("--artifacts", "artifacts_dir", type=click.Path(path_type=Path), default=None,
              help="Artifacts directory (default: TAGIFAI_ARTIFACTS_DIR or ./artifacts).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, artifacts_dir: Path | None, verbose: bool) -> None:
    """TagIfAI: tag ML project descriptions."""
    _setup_logging(verbose)
    root = artifacts_dir or Path(settings.from_env()["ARTIFACTS_DIR"])
    if ctx.invoked_subcommand in _READS_ARTIFACTS and not root.is_dir():
        where = "--artifacts" if artifacts_dir else "TAGIFAI_ARTIFACTS_DIR"
        raise artifacts.ArtifactError(f"{where}: {root} is not a directory of model versions; "
                                      "train one with `python -m tagifai_api train` (or `make model`)")
    ctx.obj = {"artifacts": root}


@cli.command()
@click.option("--args", "args_path", type=click.Path(exists=True, path_type=Path), default=settings.ARGS_FILE,
              show_default=True, help="Training arguments.")
@click.option("--data", "data_path", type=click.Path(exists=True, path_type=Path), default=settings.DATA_FILE,
              show_default=True, help="Labelled projects CSV.")
@click.option("--no-default", is_flag=True, help="Do not make the new version the default.")
@click.pass_obj
def train(obj: dict, args_path: Path, data_path: Path, no_default: bool) -> None:
    """Train a new model version and (by default) make it the default."""
    from tagifai_api.ml import data
    from tagifai_api.ml import train as training

    t0 = time.perf_counter()
    args = json.loads(args_path.read_text(encoding="utf-8"))
    log.info("training with %s on %s", args_path, data_path)
    result = training.train(data.load_dataset(data_path), args)
    version = registry_cli.open_registry(obj).save_version(result, artifacts.sha256_file(data_path),
                                                           make_default=not no_default)
    log.info("wrote %s in %.1fs%s", version.path, time.perf_counter() - t0, "" if no_default else " (default)")
    _echo_json({"version": version.version, "overall": version.performance["overall"]})


@cli.command("ensure-model")
@click.pass_context
def ensure_model(ctx: click.Context) -> None:
    """Train the default version unless a usable one exists, and give it a drift reference profile if
    it was written without one (used by `make serve`)."""
    registry = registry_cli.open_registry(ctx.obj)
    try:
        version = artifacts.load(ctx.obj["artifacts"], registry.default_version())
    except artifacts.ArtifactError as exc:
        log.info("no usable default model (%s); training one", exc)
        ctx.invoke(train)
        return
    log.info("default model %s is usable", version.version)
    try:
        done = drift_cli.ensure_profile(registry.store, ctx.obj["artifacts"], version.version)
    except artifacts.ArtifactError as exc:  # drift says `no_profile` until one is computed
        log.warning("no drift reference profile for %s: %s", version.version, exc)
        return
    if done["computed"]:
        log.info("computed the drift reference profile of %s (kept in the state store)", version.version)


@cli.command()
@click.option("--version", default="default", show_default=True, help="Model version to evaluate.")
@click.option("--data", "data_path", type=click.Path(exists=True, path_type=Path), default=settings.DATA_FILE,
              show_default=True, help="Labelled projects CSV.")
@click.pass_obj
def evaluate(obj: dict, version: str, data_path: Path) -> None:
    """Re-evaluate a version on the test split of its own args and print the report."""
    from tagifai_api.ml import data
    from tagifai_api.ml import evaluate as evaluation
    from tagifai_api.ml import train as training

    model = artifacts.load(obj["artifacts"], _named(obj, version))
    pipeline = artifacts.load_pipeline(model)
    args = model.args
    df = data.prepare(data.load_dataset(data_path), args["accepted_tags"], args["min_tag_freq"],
                      training.stopwords_for(args))
    _, _, test_df = data.split(df, args["val_size"], args["test_size"], args["seed"])
    pred = training.apply_threshold(pipeline.predict_proba(test_df["clean"]), model.labels, args["threshold"])
    _echo_json(evaluation.evaluate(list(test_df["clean"]), list(test_df["tag"]), pred, model.labels))


@cli.command("cv")
@click.option("--args", "args_path", type=click.Path(exists=True, path_type=Path), default=settings.ARGS_FILE,
              show_default=True, help="Training arguments.")
@click.option("--folds", default=5, show_default=True, help="Stratified folds.")
@click.option("--newest", default=0.2, show_default=True,
              help="Share of train + validation, newest by created_on, held out for the time-ordered score.")
def cross_validate(args_path: Path, folds: int, newest: float) -> None:
    """Weighted F1 of the args on train + validation (the test split stays unseen): stratified
    cross-validation, and a time-ordered hold-out (fit on older projects, score the newest)."""
    import pandas as pd

    from tagifai_api.ml import data
    from tagifai_api.ml import train as training

    args = json.loads(args_path.read_text(encoding="utf-8"))
    df = data.prepare(data.load_dataset(settings.DATA_FILE), args["accepted_tags"], args["min_tag_freq"],
                      training.stopwords_for(args))
    train_df, val_df, _ = data.split(df, args["val_size"], args["test_size"], args["seed"])
    train_val = pd.concat([train_df, val_df], ignore_index=True)
    mean, std = training.cross_validate(train_val, args, folds)
    held_out = training.time_ordered_score(train_val, args, newest)
    held_out["f1_weighted"] = round(held_out["f1_weighted"], 4)
    _echo_json({"folds": folds, "f1_weighted_mean": round(mean, 4), "f1_weighted_std": round(std, 4),
                "time_ordered": held_out})


@cli.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--version", default="default", show_default=True, help="Model version to use.")
@click.option("--explain", is_flag=True, help="Add each prediction's exact per-word explanation.")
@click.pass_obj
def predict(obj: dict, texts: tuple[str, ...], version: str, explain: bool) -> None:
    """Tag one or more texts and print the predictions as JSON."""
    from tagifai_api.ml.predict import Predictor

    predictor = Predictor(artifacts.load(obj["artifacts"], _named(obj, version)))
    predictions = predictor.explain(texts) if explain else predictor.predict(texts)
    results = [{"input_text": t, **p} for t, p in zip(texts, predictions)]
    _echo_json({"model_version": predictor.version, "predictions": results})


cli.add_command(keys)


@cli.group("store")
def store_group() -> None:
    """The state store (TAGIFAI_DATABASE_URL): its schema."""


@store_group.command()
def upgrade() -> None:
    """Create or upgrade the store's schema to this release's (and import the old state files once)."""
    from tagifai_api.store import open_store

    store = open_store({**settings.from_env(), "STORE_UPGRADE": True})
    before, after = store.revisions()
    _echo_json({"store": store.describe(), "schema": after})
for _command in (*registry_cli.COMMANDS, *feedback_cli.COMMANDS, *drift_cli.COMMANDS, *retrain_cli.COMMANDS):
    cli.add_command(_command)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(allow_dash=True))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Output: .csv or .jsonl (or .ndjson), plus .gz to compress, or .parquet. With --engine spark, "
                   "a directory of part files.")
@click.option("--format", "input_format", type=click.Choice(["csv", "jsonl", "parquet"]), default=None,
              help="Input format (default: from INPUT's extension; needed for standard input).")
@click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
              help="local: a pool of processes on this machine; spark: a Spark job (needs requirements-spark.txt "
                   "and Java 17 or newer).")
@click.option("--master", default=None,
              help="Spark master URL, with --engine spark  [default: local[*], or spark-submit's]")
@click.option("--text-column", default=None,
              help="Column holding the whole text  [default: text, when the input has no title and description]")
@click.option("--title-column", default=None,
              help="Column of the title, joined with the description as in training  [default: title]")
@click.option("--description-column", default=None, help="Column of the description  [default: description]")
@click.option("--id-column", default=None, help="Column to copy as each row's id  [default: the row number]")
@click.option("--version", default="default", show_default=True, help="Model version to use.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Scoring processes  [default: one per core]")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Texts per model call.")
@click.option("--chunk-size", type=click.IntRange(1, 1_000_000), default=5000, show_default=True,
              help="Rows per chunk: the unit handed to a worker and committed.")
@click.option("--explain", is_flag=True,
              help="Add the explained tag and its top words, as /predict's explanation gives them.")
@click.option("--top-words", type=click.IntRange(1, 50), default=5, show_default=True,
              help="How many words --explain lists.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run into the same OUTPUT.")
@click.option("--force", is_flag=True, help="Overwrite an existing OUTPUT.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary.")
@click.option("--progress-interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds between progress lines when standard error is not a terminal.")
@click.pass_obj
def score(obj: dict, input_path: str, output: str, input_format: str | None, engine: str, master: str | None,
          text_column: str | None, title_column: str | None, description_column: str | None, id_column: str | None,
          version: str, workers: int | None, batch_size: int, chunk_size: int, explain: bool, top_words: int,
          resume: bool, force: bool, quiet: bool, progress_interval: float) -> None:
    """Tag every row of a CSV or JSON Lines file (plain, .gz, or - for standard input) or a Parquet file.

    Exit status: 0 every row scored, 3 some rows rejected (see OUTPUT.errors.jsonl), 2 a usage
    error, 1 a failure and 130 interrupted (both resumable with --resume, unless the output is
    Parquet or the engine Spark).
    """
    from tagifai_api.scoring import job

    if text_column and (title_column or description_column):
        _fail("--text-column replaces --title-column and --description-column; give one or the other")
    if engine == "local" and master:
        _fail("--master is for --engine spark")
    if engine == "spark":
        given = click.get_current_context().get_parameter_source
        local_only = [f"--{name.replace('_', '-')}" for name in ("workers", "chunk_size", "resume", "explain",
                                                                 "top_words", "progress_interval")
                      if given(name) == click.core.ParameterSource.COMMANDLINE]
        if local_only:
            _fail(f"{local_only[0]} is for --engine local (Spark splits the work into tasks and reruns failed "
                  "ones itself; give it cores with --master local[N])")
    opts = job.ScoreOptions(
        input=input_path, output=Path(output), artifacts_dir=obj["artifacts"],
        max_text_length=int(settings.from_env()["MAX_TEXT_LENGTH"]), version=version,
        default_version=registry_cli.open_registry(obj).pointers()[0] if version == "default" else None,
        input_format=input_format, text_column=text_column, title_column=title_column,
        description_column=description_column, id_column=id_column,
        batch_size=batch_size, chunk_rows=chunk_size, workers=workers or job.default_workers(),
        explain=top_words if explain else 0, quiet=quiet, resume=resume, force=force,
        progress_interval=progress_interval,
    )
    try:
        if engine == "spark":
            from tagifai_api.scoring import spark_job

            summary = spark_job.run(opts, master, output=output)
        else:
            summary = job.run(opts)
    except job.UsageError as exc:
        _fail(str(exc))
    except job.ScoreError as exc:
        _fail(f"{exc}; run the same command with --resume to continue" if exc.resumable else str(exc), code=1)
    except job.Interrupted as exc:
        name = signal.Signals(exc.signum).name
        if exc.resumable:
            _fail(f"interrupted ({name}): {exc.committed_rows:,} rows committed to {output}; "
                  "run the same command with --resume to continue", code=128 + exc.signum)
        _fail(f"interrupted ({name}): no output is kept; run the command again", code=128 + exc.signum)
    if not quiet:
        rejected = f", {summary.rejected:,} rejected (see {summary.errors})" if summary.rejected else ""
        resumed = f" (resumed after {summary.resumed_from:,})" if summary.resumed_from else ""
        click.echo(f"scored {summary.scored:,} of {summary.rows:,} rows{rejected}{resumed} in {summary.seconds:.1f} s, "
                   f"{summary.rate:,.0f} rows/s -> {output}", err=True)
    sys.exit(3 if summary.rejected else 0)


def _fail(message: str, code: int = 2) -> None:
    """One line on standard error, then exit."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    """Entry point: every error is one clear line on standard error (exit 2 for usage, setting,
    artifact and key errors)."""
    try:
        code = cli.main(prog_name="python -m tagifai_api", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(2)
    except click.ClickException as exc:
        hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:  # Ctrl-C outside a command's own handling (click turns it into Abort)
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except (artifacts.ArtifactError, KeyStoreError, settings.SettingError, StoreError, LegacyFileError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
