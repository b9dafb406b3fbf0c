"""Alembic environment for the run catalog (schema.catalog).

Programmatic use (what ``Catalog.open`` does): ``schema.catalog.alembic_config()`` with
``config.attributes["connection"]`` set to an open SQLAlchemy connection. From the command line:
``alembic -c schema/alembic.ini -x url=sqlite:///STORE/catalog.sqlite upgrade head``.
"""

from alembic import context
from sqlalchemy import create_engine, pool

from plmscreen.schema.catalog import Base

from plmscreen.screening.run.catalog import catalog_url

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no catalog URL: pass -x url=... (sqlite:///STORE/catalog.sqlite or postgresql://...)")
    return catalog_url(url, None)


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.begin() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
