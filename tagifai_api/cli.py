"""Command line: train, evaluate, predict and manage model versions (no web stack needed)."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from tagifai_api import settings
from tagifai_api.auth.cli import keys
from tagifai_api.auth.keys import KeyFileError, KeyStoreError
from tagifai_api.ml import artifacts

log = logging.getLogger("tagifai_api.cli")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@click.group()
@click.option("--artifacts", "artifacts_dir", type=click.Path(path_type=Path), default=None,
              help="Artifacts directory (default: TAGIFAI_ARTIFACTS_DIR or ./artifacts).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, artifacts_dir: Path | None, verbose: bool) -> None:
    """TagIfAI: tag ML project descriptions."""
    _setup_logging(verbose)
    ctx.obj = {"artifacts": artifacts_dir or Path(settings.from_env()["ARTIFACTS_DIR"])}


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
    version = artifacts.save(obj["artifacts"], result, artifacts.sha256_file(data_path), make_default=not no_default)
    log.info("wrote %s in %.1fs%s", version.path, time.perf_counter() - t0, "" if no_default else " (default)")
    _echo_json({"version": version.version, "overall": version.performance["overall"]})


@cli.command("ensure-model")
@click.pass_context
def ensure_model(ctx: click.Context) -> None:
    """Train the default version unless a usable one exists (used by `make serve`)."""
    try:
        version = artifacts.load(ctx.obj["artifacts"])
    except artifacts.ArtifactError as exc:
        log.info("no usable default model (%s); training one", exc)
        ctx.invoke(train)
        return
    log.info("default model %s is usable", version.version)


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

    model = artifacts.load(obj["artifacts"], version)
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
@click.pass_obj
def predict(obj: dict, texts: tuple[str, ...], version: str) -> None:
    """Tag one or more texts and print the predictions as JSON."""
    from tagifai_api.ml.predict import Predictor

    predictor = Predictor(artifacts.load(obj["artifacts"], version))
    results = [{"input_text": t, **p} for t, p in zip(texts, predictor.predict(texts))]
    _echo_json({"model_version": predictor.version, "predictions": results})


@cli.command()
@click.pass_obj
def versions(obj: dict) -> None:
    """List model versions, marking the default."""
    root = obj["artifacts"]
    try:
        default = artifacts.default_version(root)
    except artifacts.ArtifactError:
        default = None
    for name in artifacts.list_versions(root):
        click.echo(f"{'*' if name == default else ' '} {name}")


@cli.command("set-default")
@click.argument("version")
@click.pass_obj
def set_default(obj: dict, version: str) -> None:
    """Make VERSION the default (running workers pick it up on `kill -HUP <gunicorn master>`)."""
    artifacts.set_default(obj["artifacts"], version)
    click.echo(version)


cli.add_command(keys)


def main() -> None:
    """Entry point that turns artifact and key errors into one clear line and exit code 2."""
    try:
        cli(standalone_mode=True)
    except (artifacts.ArtifactError, KeyFileError, KeyStoreError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
