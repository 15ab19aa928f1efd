"""Contract testing: schemathesis generates requests from ``/openapi.json`` and checks
every answer against the same document.

Bounded and deterministic: ``MAX_EXAMPLES`` generated cases per operation with a fixed
derandomised seed, plus the document's own examples; no example database is written.
Checks: never a 5xx; every status, content type, header and body as documented;
requests that break the schema are refused (4xx); a ``/v1`` request without the key is
refused (401).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import build_document
from shared.settings import Settings
from tests.stack import Stack

MAX_EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    ignored_auth,
]


def _cases() -> list[tuple[str, GenerationMode]]:
    """(operation label, mode) pairs; negative data only where there is input to break.
    Labels come from the document this code generates; the test reads the served one."""
    cases = []
    for path, item in build_document(Settings())["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            label = f"{method.upper()} {path}"
            cases.append((label, GenerationMode.POSITIVE))
            if "parameters" in item or "parameters" in operation or "requestBody" in operation:
                cases.append((label, GenerationMode.NEGATIVE))
    return cases


@pytest.mark.parametrize(("label", "mode"), _cases(), ids=lambda v: str(getattr(v, "value", v)))
def test_every_answer_matches_the_contract(pg_stack: Stack, label: str, mode: Any) -> None:
    schema = schemathesis.openapi.from_url(f"{pg_stack.url}/openapi.json")
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served document"
    auth = {"Authorization": f"Bearer {pg_stack.key}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_as_documented(case: Any) -> None:
        case.call_and_validate(headers=auth, checks=CHECKS)

    answers_as_documented()
