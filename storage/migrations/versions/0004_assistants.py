"""The Assistants API: assistants, threads, their messages, runs and run steps.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 21:10:51.334953
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "assistants",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("data", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("assistants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_assistants_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_assistants_tenant"), ["tenant"], unique=False)

    op.create_table(
        "run_steps",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("data", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("run_steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_steps_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_run_steps_run_id"), ["run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_run_steps_tenant"), ["tenant"], unique=False)

    op.create_table(
        "thread_messages",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("data", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("thread_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("run_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("thread_messages", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_thread_messages_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_thread_messages_tenant"), ["tenant"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_thread_messages_thread_id"), ["thread_id"], unique=False
        )

    op.create_table(
        "thread_runs",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("data", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("thread_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("transcript", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("thread_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_thread_runs_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_thread_runs_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_thread_runs_tenant"), ["tenant"], unique=False)
        batch_op.create_index(batch_op.f("ix_thread_runs_thread_id"), ["thread_id"], unique=False)

    op.create_table(
        "threads",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("data", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("active_run_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("session_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("placed", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("outputs", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_threads_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_threads_tenant"), ["tenant"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("threads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_threads_tenant"))
        batch_op.drop_index(batch_op.f("ix_threads_id"))

    op.drop_table("threads")
    with op.batch_alter_table("thread_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_thread_runs_thread_id"))
        batch_op.drop_index(batch_op.f("ix_thread_runs_tenant"))
        batch_op.drop_index(batch_op.f("ix_thread_runs_status"))
        batch_op.drop_index(batch_op.f("ix_thread_runs_id"))

    op.drop_table("thread_runs")
    with op.batch_alter_table("thread_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_thread_messages_thread_id"))
        batch_op.drop_index(batch_op.f("ix_thread_messages_tenant"))
        batch_op.drop_index(batch_op.f("ix_thread_messages_id"))

    op.drop_table("thread_messages")
    with op.batch_alter_table("run_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_steps_tenant"))
        batch_op.drop_index(batch_op.f("ix_run_steps_run_id"))
        batch_op.drop_index(batch_op.f("ix_run_steps_id"))

    op.drop_table("run_steps")
    with op.batch_alter_table("assistants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_assistants_tenant"))
        batch_op.drop_index(batch_op.f("ix_assistants_id"))

    op.drop_table("assistants")
