"""``python -m tagifai_api versions | set-default | rollback | seed``: the registry from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tagifai_api import settings
from tagifai_api.ml import artifacts
from tagifai_api.store import open_store
from tagifai_api.store.registry import Registry


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def open_registry(obj: dict) -> Registry:
    """The registry of the command's artifacts directory, in the store the settings name (made
    ready on first use: its schema upgraded, the old state files imported)."""
    if "registry" not in obj:
        obj["registry"] = Registry(open_store({**settings.from_env(), "ARTIFACTS_DIR": str(obj["artifacts"])}), obj["artifacts"])
    return obj["registry"]


@click.command()
@click.pass_obj
def versions(obj: dict) -> None:
    """List model versions, marking the default."""
    default = open_registry(obj).pointers()[0]
    for name in artifacts.list_versions(obj["artifacts"]):
        click.echo(f"{'*' if name == default else ' '} {name}")


@click.command("set-default")
@click.argument("version")
@click.option("--reason", default=None, help="Why, for the audit log.")
@click.pass_obj
def set_default(obj: dict, version: str, reason: str | None) -> None:
    """Verify VERSION and make it the default, keeping the previous one in the history.

    Running workers (of every replica sharing the store) follow within seconds; no signal needed.
    """
    previous, current = open_registry(obj).set_default(version, reason=reason)
    _echo_json({"previous": previous, "default": current})


@click.command()
@click.option("--reason", default=None, help="Why, for the audit log.")
@click.pass_obj
def rollback(obj: dict, reason: str | None) -> None:
    """Make the previous default the default again."""
    previous, current = open_registry(obj).rollback(reason=reason)
    _echo_json({"previous": previous, "default": current})


@click.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def seed(obj: dict, source: Path) -> None:
    """Copy SOURCE's versions that the artifacts directory lacks (and make the newest the default,
    if the store has none).

    For a fresh volume: the Kubernetes init container and the compose file run it with the
    versions the image was built with.
    """
    registry = open_registry(obj)
    copied = registry.seed(source)
    _echo_json({"copied": copied, "default": registry.default_version()})


COMMANDS = (versions, set_default, rollback, seed)
