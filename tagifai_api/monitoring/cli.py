"""``python -m tagifai_api drift profile | report``: reference profiles of versions written before a
version carried one, and a version's drift from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tagifai_api import settings
from tagifai_api.ml import artifacts
from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.monitoring.service import DriftMonitor
from tagifai_api.store import open_store
from tagifai_api.store.database import Store


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _store(obj: dict) -> Store:
    if "store" not in obj:
        obj["store"] = open_store({**settings.from_env(), "ARTIFACTS_DIR": str(obj["artifacts"])})
    return obj["store"]


def _version(obj: dict, version: str) -> str:
    if version != "default":
        return version
    found = _store(obj).pointers()[0]
    if found is None:
        raise ArtifactError("the state store records no default version; name one")
    return found


def ensure_profile(store: Store, root: Path, version: str, data_path: Path = settings.DATA_FILE) -> dict:
    """Give ``version`` a reference profile if it has none: computed from the dataset it was trained
    on (checked by its sha256) and kept in the store, its own directory never changing. What was done."""
    model = artifacts.load(root, version)
    if artifacts.load_profile(model) is not None:
        return {"version": version, "kept_in": "version", "computed": False}
    if store.drift_profile(version) is not None:
        return {"version": version, "kept_in": "store", "computed": False}
    expected = model.manifest.get("dataset_sha256")
    if artifacts.sha256_file(data_path) != expected:
        raise ArtifactError(f"{data_path} is not the dataset {version} was trained on (sha256 {expected}); "
                            "give that one with --data")
    from tagifai_api.ml import data
    from tagifai_api.ml import train as training

    profile = training.version_profile(data.load_dataset(data_path), model.args, model.compiled)
    store.save_drift_profile(version, profile, expected)
    return {"version": version, "kept_in": "store", "computed": True, "texts": profile["texts"]}


@click.group()
def drift() -> None:
    """Drift of the versions' live predictions from their reference profiles."""


@drift.command()
@click.argument("version", required=False)
@click.option("--all", "every", is_flag=True, help="Every version that has no profile yet.")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=settings.DATA_FILE, show_default=True, help="The dataset the versions were trained on.")
@click.pass_obj
def profile(obj: dict, version: str | None, every: bool, data_path: Path) -> None:
    """Compute the reference profile of VERSION (a name, or `default`), if it was written without one.

    Versions trained since profiles exist carry theirs (profile.json, checksummed with their other
    files); an older version's directory is left as it is and its profile is kept in the state store.
    """
    if every == (version is not None):
        raise click.UsageError("name a VERSION or give --all")
    root = obj["artifacts"]
    names = artifacts.list_versions(root) if every else [_version(obj, version)]
    _echo_json([ensure_profile(_store(obj), root, name, data_path) for name in names])


@drift.command()
@click.argument("version", default="default")
@click.pass_obj
def report(obj: dict, version: str) -> None:
    """Print VERSION's drift now, as GET /models/<version>/drift answers it."""
    values = settings.from_env()
    monitor = DriftMonitor(_store(obj), obj["artifacts"], window=int(values["DRIFT_WINDOW"]),
                           minimum=int(values["DRIFT_MIN"]), thresholds=settings.drift_thresholds(values))
    name = _version(obj, version)
    artifacts.load(obj["artifacts"], name, compiled=False)  # an unknown or damaged version: one line
    _echo_json(monitor.report(name))


COMMANDS = (drift,)
