"""indexes: receipts look up parts by the SMSC's id alone; nullable keys indexed only where set

The receipt look-ups (``sms_parts`` and ``parked_receipts`` by ``smsc_message_key``) could not use
the (connector, key) indexes, whose first column they do not constrain: every receipt scanned the
table. Their new indexes lead with the key. Columns that most rows leave NULL (an SMS part's key
until the SMSC answers, a message's Message-ID and inbound dedupe key) are indexed only where set,
so a new outbound SMS no longer adds three index entries nobody looks up. Idempotency keys get an
index on their age: the retention purge scanned the whole table for the old ones.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _where(column: str) -> dict[str, sa.TextClause]:
    clause = sa.text(f"{column} IS NOT NULL")
    return {"sqlite_where": clause, "postgresql_where": clause}


def upgrade() -> None:
    op.drop_index("ix_sms_parts_connector_smsc_key", table_name="sms_parts")
    op.create_index("ix_sms_parts_smsc_key", "sms_parts", ["smsc_message_key"], **_where("smsc_message_key"))
    op.drop_index("ix_parked_receipts_connector_key", table_name="parked_receipts")
    op.create_index("ix_parked_receipts_key", "parked_receipts", ["smsc_message_key"])
    op.drop_index("ix_messages_email_message_id", table_name="messages")
    op.create_index(
        "ix_messages_email_message_id", "messages", ["email_message_id"], **_where("email_message_id")
    )
    op.drop_index("ux_messages_tenant_inbound_key", table_name="messages")
    op.create_index(
        "ux_messages_tenant_inbound_key",
        "messages",
        ["tenant_id", "inbound_key"],
        unique=True,
        **_where("inbound_key"),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_index("ux_messages_tenant_inbound_key", table_name="messages")
    op.create_index("ux_messages_tenant_inbound_key", "messages", ["tenant_id", "inbound_key"], unique=True)
    op.drop_index("ix_messages_email_message_id", table_name="messages")
    op.create_index("ix_messages_email_message_id", "messages", ["email_message_id"])
    op.drop_index("ix_parked_receipts_key", table_name="parked_receipts")
    op.create_index("ix_parked_receipts_connector_key", "parked_receipts", ["connector", "smsc_message_key"])
    op.drop_index("ix_sms_parts_smsc_key", table_name="sms_parts")
    op.create_index("ix_sms_parts_connector_smsc_key", "sms_parts", ["connector", "smsc_message_key"])
