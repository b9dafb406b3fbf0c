"""Runs record their model's backend and each weight file's sha256 (issue 14: model families).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("model_family", sa.String(32), nullable=True))
        batch.add_column(sa.Column("weight_sha256", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("weight_sha256")
        batch.drop_column("model_family")
