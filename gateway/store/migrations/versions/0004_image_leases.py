"""Leases on work shared by replicas: images get a lease (locked_until, locked_by), a fencing token (attempt)
and the time of their last claim (claimed_at); job_leases holds one lease per periodic sweep.

Images already 'processing' start with no lease and attempt 0, so any replica may claim them at once.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
# The integrator re-chains this onto 0003 at merge; it depends on nothing after 0002.
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("images") as images:
        images.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
        images.add_column(sa.Column("locked_until", _TIMESTAMP, nullable=True))
        images.add_column(sa.Column("locked_by", sa.String(length=64), nullable=True))
        images.add_column(sa.Column("claimed_at", _TIMESTAMP, nullable=True))
    op.create_index("ix_images_status_locked_until", "images", ["status", "locked_until"])
    op.create_index("ix_images_account_id_claimed_at", "images", ["account_id", "claimed_at"])
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", _TIMESTAMP, nullable=True),
        sa.Column("locked_by", sa.String(length=64), nullable=True),
        sa.Column("last_run_at", _TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_leases")),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
    op.drop_index("ix_images_account_id_claimed_at", table_name="images")
    op.drop_index("ix_images_status_locked_until", table_name="images")
    with op.batch_alter_table("images") as images:
        images.drop_column("claimed_at")
        images.drop_column("locked_by")
        images.drop_column("locked_until")
        images.drop_column("attempt")
