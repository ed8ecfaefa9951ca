"""Quarter credits: a preview result of the remove.bg drop-in costs a quarter of an image. `quarters_used` counts
them beside `images_used`; the month's usage is images_used + quarters_used / 4, and the quota check compares
4 x images_used + quarters_used with 4 x the plan's images.

Existing rows start at 0.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as usage:
        usage.add_column(sa.Column("quarters_used", sa.Integer(), nullable=False, server_default="0"))
        usage.create_check_constraint("quarters_used_non_negative", "quarters_used >= 0")


def downgrade() -> None:
    with op.batch_alter_table("usage") as usage:
        usage.drop_constraint("quarters_used_non_negative", type_="check")
        usage.drop_column("quarters_used")
