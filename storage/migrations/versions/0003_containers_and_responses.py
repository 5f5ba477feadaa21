"""Containers, their files, and stored responses of the Responses API.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 21:30:21.292621
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "container_files",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("container_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("file_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("container_files", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_container_files_container_id"), ["container_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_container_files_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_container_files_tenant"), ["tenant"], unique=False)

    op.create_table(
        "containers",
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("last_active_at", sa.Integer(), nullable=False),
        sa.Column("expires_after_minutes", sa.Integer(), nullable=False),
        sa.Column("memory_limit", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_containers_id"), ["id"], unique=True)
        batch_op.create_index(batch_op.f("ix_containers_tenant"), ["tenant"], unique=False)

    op.create_table(
        "responses",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("tenant", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("body", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("input_items", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("conversation", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("container_id", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_responses_tenant"), ["tenant"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_responses_tenant"))

    op.drop_table("responses")
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_containers_tenant"))
        batch_op.drop_index(batch_op.f("ix_containers_id"))

    op.drop_table("containers")
    with op.batch_alter_table("container_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_container_files_tenant"))
        batch_op.drop_index(batch_op.f("ix_container_files_id"))
        batch_op.drop_index(batch_op.f("ix_container_files_container_id"))

    op.drop_table("container_files")
