"""Execution nodes and the sandbox sessions they hold.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 19:45:57.303820
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "exec_nodes",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("boot_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("backend", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("sandboxes", sa.Integer(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("busy", sa.Integer(), nullable=False),
        sa.Column("warm", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "sandbox_sessions",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("node_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("boot_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("idle_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sandbox_sessions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sandbox_sessions_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_sandbox_sessions_node_id"), ["node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sandbox_sessions_tenant"), ["tenant"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sandbox_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sandbox_sessions_tenant"))
        batch_op.drop_index(batch_op.f("ix_sandbox_sessions_node_id"))
        batch_op.drop_index(batch_op.f("ix_sandbox_sessions_expires_at"))

    op.drop_table("sandbox_sessions")
    op.drop_table("exec_nodes")
