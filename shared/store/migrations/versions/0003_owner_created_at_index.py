"""Listing a caller's generations (GET /v1/generations): an index on (owner, created_at).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_generations_owner_created_at", "generations", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_generations_owner_created_at", table_name="generations")
