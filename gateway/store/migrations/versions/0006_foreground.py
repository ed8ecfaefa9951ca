"""Options added to the spec (output_type, crop, crop_margin, model, bg_image_url) as one JSON column, the
storage key of an uploaded background image, and the foreground's bounding box of each completed image.

Existing images keep NULL everywhere: the default options, and no box known.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as images:
        images.add_column(sa.Column("options", sa.JSON(), nullable=True))
        images.add_column(sa.Column("bg_source_key", sa.String(length=255), nullable=True))
        images.add_column(sa.Column("foreground_left", sa.Integer(), nullable=True))
        images.add_column(sa.Column("foreground_top", sa.Integer(), nullable=True))
        images.add_column(sa.Column("foreground_width", sa.Integer(), nullable=True))
        images.add_column(sa.Column("foreground_height", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as images:
        images.drop_column("foreground_height")
        images.drop_column("foreground_width")
        images.drop_column("foreground_top")
        images.drop_column("foreground_left")
        images.drop_column("bg_source_key")
        images.drop_column("options")
