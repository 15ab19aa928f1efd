"""What a tombstone keeps is decided for every column of ``jobs``, once."""

from __future__ import annotations

from shared.models import Job
from shared.retention import EMPTIED, TOMBSTONE_KEEPS, retention_days
from shared.settings import Settings


def test_every_job_column_is_either_kept_or_emptied_by_retention() -> None:
    columns = {column.key for column in Job.__table__.columns}

    assert TOMBSTONE_KEEPS.isdisjoint(EMPTIED)
    assert TOMBSTONE_KEEPS | set(EMPTIED) == columns


def test_a_tenant_retention_overrides_the_server_one_and_zero_keeps_forever() -> None:
    off, on = Settings(), Settings(retention_days=30)

    assert [retention_days(off, days) for days in (None, 0, 7)] == [None, None, 7]
    assert [retention_days(on, days) for days in (None, 0, 7)] == [30, None, 7]
