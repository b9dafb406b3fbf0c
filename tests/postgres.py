"""The local PostgreSQL for catalog tests: is it there, and a fresh database or schema per test.

Tests that need it call ``require_postgres()``: without a server they are skipped with the reason,
except in CI (``CI=true``) or with PLMSCREEN_REQUIRE_POSTGRES=1, where that is a failure."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid

import pytest
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("PLMSCREEN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_state: dict[str, str | None] = {}


def postgres_problem() -> str | None:
    """None if PostgreSQL answers, else why not (checked once per session)."""
    if "problem" not in _state:
        problem = None
        try:
            engine = create_engine(PG_URL, connect_args={"connect_timeout": 5})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
        except Exception as exc:  # noqa: BLE001 - any failure means: not reachable
            problem = f"cannot connect to {PG_URL}: {str(exc).splitlines()[0]}"
        _state["problem"] = problem
    return _state["problem"]


def postgres_required() -> bool:
    return bool(os.environ.get("PLMSCREEN_REQUIRE_POSTGRES")) or os.environ.get("CI", "").lower() == "true"


def require_postgres() -> None:
    problem = postgres_problem()
    if problem:
        message = f"PostgreSQL not reachable on 127.0.0.1:5432: {problem}"
        if postgres_required():
            pytest.fail(message + " (CI requires it)")
        pytest.skip(message)


@contextlib.contextmanager
def fresh_database():
    """A new, empty PostgreSQL database; its SQLAlchemy URL. Dropped afterwards."""
    require_postgres()
    name = f"plmscreen_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def fresh_schema():
    """A new PostgreSQL schema name in the test database. Dropped afterwards."""
    require_postgres()
    schema = f"plmscreen_test_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        engine = create_engine(PG_URL)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
