"""Alembic environment: runs against the connection `service.db.migrate` hands
over, or against DATABASE_URL when called from the `alembic` command."""

from alembic import context
from sqlalchemy import create_engine

from service.config import get_settings
from service.db.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    if context.is_offline_mode():
        context.configure(url=get_settings().db_url, target_metadata=target_metadata,
                          literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(get_settings().db_url)
    with engine.connect() as conn:
        run(conn)
    engine.dispose()


main()
