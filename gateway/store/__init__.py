"""Store layer (database, tables, migrations, object storage): may import only the top shared modules, nothing above."""
