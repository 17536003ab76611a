"""inbound email (issue 6): sender verification, stored headers, IMAP dedupe

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        # Refuse mail without an aligned DKIM/SPF pass (issue 6 "Anti-spoofing"); default: accept it
        # marked sender_verified false.
        batch.add_column(
            sa.Column("require_verified_sender", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("sender_verified", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("email_date", sa.DateTime(), nullable=True))
        # Inbound email: references, recipients, our Authentication-Results (RFC 8601), how it came.
        batch.add_column(sa.Column("email_headers", _JSON, nullable=True))
        # SHA-256 of (sender, Message-ID): the same mail read twice (IMAP re-read, SMTP resend) is
        # stored once per tenant.
        batch.add_column(sa.Column("inbound_key", sa.String(length=64), nullable=True))
        batch.create_index("ux_messages_tenant_inbound_key", ["tenant_id", "inbound_key"], unique=True)
    with op.batch_alter_table("attachments") as batch:
        # Per-tenant dedupe of stored files (quota counts each distinct file once).
        batch.create_index("ix_attachments_tenant_sha256", ["tenant_id", "sha256"])


def downgrade() -> None:
    with op.batch_alter_table("attachments") as batch:
        batch.drop_index("ix_attachments_tenant_sha256")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ux_messages_tenant_inbound_key")
        batch.drop_column("inbound_key")
        batch.drop_column("email_headers")
        batch.drop_column("email_date")
        batch.drop_column("sender_verified")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("require_verified_sender")
