"""What the operator needs to run accounts: when an account was disabled (its keys are refused with 403 until it
is enabled again) and when each API key was last used (recorded at most once a minute per key).

Existing accounts stay enabled; existing keys have no recorded use.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out, as in the earlier migrations, so this keeps meaning what it meant when the models change.
_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("accounts") as accounts:
        accounts.add_column(sa.Column("disabled_at", _TIMESTAMP, nullable=True))
    with op.batch_alter_table("api_keys") as api_keys:
        api_keys.add_column(sa.Column("last_used_at", _TIMESTAMP, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as api_keys:
        api_keys.drop_column("last_used_at")
    with op.batch_alter_table("accounts") as accounts:
        accounts.drop_column("disabled_at")
