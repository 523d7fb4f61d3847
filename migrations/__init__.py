"""Alembic migrations of the Flywheel store. Run with ``flywheel db upgrade``."""
