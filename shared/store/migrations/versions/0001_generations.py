"""The generations table.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("reasoning", sa.Text(), nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("terminal_event_id", sa.String(48), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hook_name", sa.String(200), nullable=True),
        sa.Column("hook_status", sa.String(16), nullable=False),
        sa.Column("hook_attempts", sa.Integer(), nullable=False),
        sa.Column("hook_error", sa.Text(), nullable=True),
        sa.Column("hook_started_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_generations_finished_at", "generations", ["finished_at"])
    op.create_index("ix_generations_hook_status", "generations", ["hook_status"])


def downgrade() -> None:
    op.drop_table("generations")
