"""Alembic migrations, run with ``sightline db upgrade`` (no alembic.ini needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.db import create_engine_for
from shared.settings import Settings

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(settings: Settings) -> Config:
    """An Alembic config pointing at this package and ``settings.database_url``."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["settings"] = settings
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Safe to run again: applied ones are skipped."""
    _run(settings, command.upgrade, revision)


def downgrade(settings: Settings, revision: str) -> None:
    """Undo migrations down to ``revision`` (data that only newer revisions can hold, such
    as a second key in a tenant, is folded back as each migration says)."""
    _run(settings, command.downgrade, revision)


def _run(settings: Settings, action: Callable[[Config, str], None], revision: str) -> None:
    engine = create_engine_for(settings)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # Batch mode rebuilds a table by copy, drop and rename; with foreign keys
                # enforced, dropping a referenced table fails. The pragma only works
                # outside a transaction, so it goes straight to the driver (the engine,
                # foreign keys off, is disposed of below).
                driver = connection.connection.driver_connection
                assert driver is not None, "a checked-out connection holds its driver's"
                driver.execute("PRAGMA foreign_keys=OFF")
            with connection.begin():
                config = alembic_config(settings)
                config.attributes["connection"] = connection
                action(config, revision)
    finally:
        engine.dispose()
