"""tenants: further alphanumeric headers a message may pick (issue 3)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 06:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column(
                "sms_alphanumeric_allowed",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            ))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("sms_alphanumeric_allowed")
