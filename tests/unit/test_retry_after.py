"""``Retry-After`` as the webhook sender reads it: seconds or an HTTP-date, capped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker.webhook_sender import retry_after_s

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": " 7 "}, 7.0),
        ({"Retry-After": "86400"}, 3600.0),  # capped
        ({"Retry-After": "Mon, 30 Nov 2026 12:01:30 GMT"}, 90.0),
        ({"Retry-After": "Mon, 30 Nov 2026 11:00:00 GMT"}, 0.0),  # already past
        ({"Retry-After": "Tue, 01 Dec 2026 12:00:00 GMT"}, 3600.0),  # capped
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_seconds_or_a_date_within_the_cap(
    headers: dict[str, str], expected: float | None
) -> None:
    assert retry_after_s(headers, NOW, cap_s=3600) == expected
