"""Code every deployable part shares and that belongs to none of them (logging); imports nothing of the project."""
