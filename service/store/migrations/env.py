"""Alembic environment: migrations run against the URL set by ``service.store.engine.migrate``."""

from __future__ import annotations

from alembic import context

from service.store.engine import VERSION_TABLE, make_engine
from service.store.models import Base

config = context.config
engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
engine.dispose()
