"""Alembic migrations of the schema in `storage.models` (run through `storage.migrate`)."""
