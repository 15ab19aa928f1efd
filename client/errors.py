"""The client's error for an API error answer (problem+json, RFC 9457)."""

from __future__ import annotations

from typing import Any

import requests


class ApiError(Exception):
    """The API answered with an error; ``problem`` is its problem+json body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status}: {problem.get('detail') or problem.get('title')}")
        self.status = status
        self.problem = problem


def raise_for_problem(response: requests.Response) -> None:
    """Raise :class:`ApiError` if ``response`` is a 4xx or 5xx answer."""
    if response.status_code < 400:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text}
    raise ApiError(response.status_code, problem)
