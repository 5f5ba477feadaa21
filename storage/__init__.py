"""Persistence: SQLModel tables over SQLite or PostgreSQL, and a blob store for file bytes."""
