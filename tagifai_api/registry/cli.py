"""``python -m tagifai_api versions | set-default | rollback | seed``: the registry from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tagifai_api.ml import artifacts
from tagifai_api.store import registry


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@click.command()
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


@click.command("set-default")
@click.argument("version")
@click.pass_obj
def set_default(obj: dict, version: str) -> None:
    """Verify VERSION and make it the default, keeping the previous one in the history.

    Running workers (of every replica sharing the directory) follow within seconds; no signal needed.
    """
    previous, current = registry.set_default(obj["artifacts"], version)
    _echo_json({"previous": previous, "default": current})


@click.command()
@click.pass_obj
def rollback(obj: dict) -> None:
    """Make the previous default the default again."""
    previous, current = registry.rollback(obj["artifacts"])
    _echo_json({"previous": previous, "default": current})


@click.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def seed(obj: dict, source: Path) -> None:
    """Copy SOURCE's versions that the artifacts directory lacks (and its default, if it has none).

    For a fresh shared volume: the Kubernetes init container and the compose file run it with the
    versions the image was built with.
    """
    copied = registry.seed(obj["artifacts"], source)
    _echo_json({"copied": copied, "default": registry.default_version(obj["artifacts"])})


COMMANDS = (versions, set_default, rollback, seed)
