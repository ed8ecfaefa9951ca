"""How many claims of an image were abandoned (their lease ran out: the replica died, stalled or lost its
database) rather than released by a graceful stop or finished: what batch_max_attempts counts, so rolling
restarts no longer use up an image's attempts. `attempt` stays the fencing token, growing with every claim.

Existing images start at 0.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as images:
        images.add_column(sa.Column("abandoned_claims", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("images") as images:
        images.drop_column("abandoned_claims")
