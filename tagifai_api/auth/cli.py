"""``python -m tagifai_api keys ...``: create, list and revoke API keys."""

from __future__ import annotations

import click

from tagifai_api import settings
from tagifai_api.auth.keys import ROLES, KeyStore
from tagifai_api.store import open_store


@click.group()
@click.pass_context
def keys(ctx: click.Context) -> None:
    """Manage API keys in the state store (TAGIFAI_DATABASE_URL); running workers of every replica
    sharing it pick changes up within a second or so."""
    store = open_store(settings.from_env())
    ctx.call_on_close(store.close)
    ctx.obj = KeyStore(store)


@keys.command()
@click.option("--name", required=True, help="A unique name for the key's holder (shown in access lines).")
@click.option("--role", required=True, type=click.Choice(ROLES), help="predict: read and predict; admin: everything.")
@click.pass_obj
def create(store: KeyStore, name: str, role: str) -> None:
    """Create a key and print it, once.

    Only its hash is stored: the key cannot be shown again, only revoked and replaced.
    """
    key = store.create(name, role)
    click.echo(key)
    click.echo(f"created {role} key {name!r} in {store.store.describe()}; it is not shown again", err=True)


@keys.command("list")
@click.pass_obj
def list_keys(store: KeyStore) -> None:
    """List keys: names, roles, creation times.

    Never the keys or their hashes.
    """
    entries = store.list()
    if not entries:
        click.echo(f"no keys in {store.store.describe()}", err=True)
        return
    width = max(len("NAME"), *(len(k.name) for k in entries))
    click.echo(f"{'NAME':<{width}}  {'ROLE':<7}  CREATED")
    for k in entries:
        click.echo(f"{k.name:<{width}}  {k.role:<7}  {k.created_at}")


@keys.command()
@click.argument("name")
@click.pass_obj
def revoke(store: KeyStore, name: str) -> None:
    """Remove the key called NAME."""
    removed = store.revoke(name)
    click.echo(f"revoked {removed.role} key {removed.name!r}", err=True)
