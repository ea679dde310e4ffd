"""Alembic's entry point: run the migrations on the connection :mod:`tagifai_api.store.database` hands over."""

from alembic import context

from tagifai_api.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
