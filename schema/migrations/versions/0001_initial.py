"""Initial catalog: runs, shards, input_sequences.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from plmscreen.schema.catalog import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("input_path", sa.Text(), nullable=True),
        sa.Column("input_sha256", sa.String(64), nullable=True),
        sa.Column("model_name", sa.String(255), nullable=True),
        sa.Column("checkpoint_sha256", sa.String(64), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=True),
        sa.Column("plmscreen_version", sa.String(32), nullable=True),
        sa.Column("store_path", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('running', 'done', 'failed', 'cancelled')", name=op.f("ck_runs_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_table(
        "shards",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("shard_index", sa.Integer(), nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("output_files", sa.JSON(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name=op.f("ck_shards_status")),
        sa.CheckConstraint("first_seq <= last_seq", name=op.f("ck_shards_range")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_shards_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shards")),
        sa.UniqueConstraint("run_id", "shard_index", name=op.f("uq_shards_run_id")),
    )
    op.create_index(op.f("ix_shards_run_id"), "shards", ["run_id"], unique=False)
    op.create_table(
        "input_sequences",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("seq_id", sa.String(1000), nullable=False),
        sa.Column("shard_index", sa.Integer(), nullable=False),
        sa.Column("sequence_sha256", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_input_sequences_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_input_sequences")),
        sa.UniqueConstraint("run_id", "seq_id", name=op.f("uq_input_sequences_run_id")),
    )
    op.create_index("ix_input_sequences_run_id_shard_index", "input_sequences", ["run_id", "shard_index"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_input_sequences_run_id_shard_index", table_name="input_sequences")
    op.drop_table("input_sequences")
    op.drop_index(op.f("ix_shards_run_id"), table_name="shards")
    op.drop_table("shards")
    op.drop_table("runs")
