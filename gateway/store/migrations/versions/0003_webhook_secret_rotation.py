"""Webhook secret rotation: the previous secret, when it stops signing, and when the secret was last rotated.

Existing secrets are kept as they are (64 hex characters): they keep signing, and they are valid Standard
Webhooks secrets too (read as base64, as the `standardwebhooks` library reads a secret without its prefix).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, so SQLite does them in place): a batch-mode table copy would DROP accounts,
    # and with foreign keys on, that cascades to every image, batch and key.
    op.add_column("accounts", sa.Column("previous_webhook_secret", sa.String(length=64), nullable=True))
    op.add_column("accounts", sa.Column("previous_webhook_secret_expires_at", _TIMESTAMP, nullable=True))
    op.add_column("accounts", sa.Column("webhook_secret_rotated_at", _TIMESTAMP, nullable=True))


def downgrade() -> None:
    # DROP COLUMN works in place on SQLite >= 3.35 and PostgreSQL.
    op.drop_column("accounts", "webhook_secret_rotated_at")
    op.drop_column("accounts", "previous_webhook_secret_expires_at")
    op.drop_column("accounts", "previous_webhook_secret")
