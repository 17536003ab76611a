"""drops: the inbound-email dedupe key, so a refused mail read twice is recorded once

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 08:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("drops") as batch:
        batch.add_column(sa.Column("inbound_key", sa.String(length=64), nullable=True))
        batch.create_index("ix_drops_tenant_inbound_key", ["tenant_id", "inbound_key"])


def downgrade() -> None:
    with op.batch_alter_table("drops") as batch:
        batch.drop_index("ix_drops_tenant_inbound_key")
        batch.drop_column("inbound_key")
