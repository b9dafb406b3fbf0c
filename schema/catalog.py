"""The run catalog's tables (the data contract of every catalog database): runs, their shards and the
input sequences of each shard. SQLAlchemy 2 ORM, migrated by Alembic (``schema/migrations``).

The code that reads and updates them (open, register, claim, finish) is
``plmscreen.screening.run.catalog.Catalog``."""


from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

CATALOG_FILENAME = "catalog.sqlite"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SHARD_STATES = ("pending", "running", "done", "failed")
RUN_STATES = ("running", "done", "failed", "cancelled")
_CLAIMABLE = ("pending", "failed")
_MAX_ERROR_CHARS = 20_000

def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog; use timezone-aware UTC")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(f"status IN {RUN_STATES!r}", name="status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # plmscreen.screening.run.plan.run_id_for
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    input_path: Mapped[str | None] = mapped_column(Text)
    input_sha256: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(255))
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    model_family: Mapped[str | None] = mapped_column(String(32))  # the backend: fair-esm, hf-esm, hf-esmc, carp
    weight_sha256: Mapped[dict | None] = mapped_column(JSON)  # weight file name -> sha256
    parameters: Mapped[dict | None] = mapped_column(JSON)
    plmscreen_version: Mapped[str | None] = mapped_column(String(32))
    store_path: Mapped[str | None] = mapped_column(Text)
    # Which flag calibration set the run's flag rule (id, date, held-out rates) or why none did
    # (plmscreen.screening.run.calibrations.calibration_note).
    calibration: Mapped[dict | None] = mapped_column(JSON)


class Shard(Base):
    __tablename__ = "shards"
    __table_args__ = (
        UniqueConstraint("run_id", "shard_index"),
        CheckConstraint(f"status IN {SHARD_STATES!r}", name="status"),
        CheckConstraint("first_seq <= last_seq", name="range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    shard_index: Mapped[int] = mapped_column(Integer)
    first_seq: Mapped[int] = mapped_column(Integer)
    last_seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    output_files: Mapped[list | None] = mapped_column(JSON)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))  # "host:pid" of the latest claim
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # renewed by the claim's holder


class InputSequence(Base):
    __tablename__ = "input_sequences"
    __table_args__ = (
        UniqueConstraint("run_id", "seq_id"),
        Index("ix_input_sequences_run_id_shard_index", "run_id", "shard_index"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    seq_id: Mapped[str] = mapped_column(String(1000))
    shard_index: Mapped[int] = mapped_column(Integer)
    sequence_sha256: Mapped[str] = mapped_column(String(64))

class Calibration(Base):
    """A flag-rule calibration of one checkpoint (``plmscreen calibrate``): the rule it chose and
    the rates measured on held-out constructs. Screens with that checkpoint use the newest one
    unless their flag thresholds are set explicitly (plmscreen.screening.run.calibrations)."""

    __tablename__ = "calibrations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    plmscreen_version: Mapped[str | None] = mapped_column(String(32))
    run_id: Mapped[str | None] = mapped_column(String(64))  # the run that scored the constructs (no FK: runs may be deleted)
    flag_rule: Mapped[dict] = mapped_column(JSON)  # dataclasses.asdict(FlagRule), whatever its fields
    summary: Mapped[dict] = mapped_column(JSON)  # the record without its per-sequence rows
    record_path: Mapped[str | None] = mapped_column(Text)


def alembic_config(url: str | None = None):
    """An Alembic ``Config`` for ``schema/migrations`` (no ini file needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
