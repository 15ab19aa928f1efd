"""The error-code registry is the only source of codes, and its statuses are the true ones.

Raise sites name :class:`ErrorCode` members, never strings; the status the registry gives
a code is the status of the exception raised with it; the errors table in
``docs/http-api.md`` is the registry's. (That the OpenAPI document lists every code a client
can meet is in ``test_openapi.py``.)
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from api.console.security import CsrfRejected
from api.job_input import MAX_FORM_PARTS, MAX_JSON_DEPTH, MAX_JSON_VALUES, MAX_TEXT_PART_BYTES
from api.submission import MAX_IDEMPOTENCY_KEY_CHARS
from shared.blobs import BlobMissing
from shared.error_codes import ERRORS, ErrorCode, JobErrorCode, Where, markdown_table
from shared.errors import SightlineError
from shared.ssrf import ForbiddenDestination

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "shared", "worker", "cli")
# The one class whose status differs from its code's: a blob the console cannot find is the
# server's fault (500), and the console shows it as an HTML page, never as a problem document.
STATUS_EXCEPTIONS = {BlobMissing}
# Subclasses defined outside shared/errors.py, imported so that __subclasses__ finds them.
DEFINED_ELSEWHERE = (CsrfRejected, BlobMissing, ForbiddenDestination)


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _error_classes() -> dict[str, type[SightlineError]]:
    assert DEFINED_ELSEWHERE
    found: dict[str, type[SightlineError]] = {}
    pending: list[type[SightlineError]] = [SightlineError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def _member(node: ast.expr) -> ErrorCode | JobErrorCode | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("ErrorCode", "JobErrorCode")
    ):
        return ErrorCode[node.attr] if node.value.id == "ErrorCode" else JobErrorCode[node.attr]
    return None


def test_every_member_has_one_registry_entry() -> None:
    assert list(ERRORS) == list(ErrorCode)


def test_no_code_is_a_plain_string() -> None:
    """``code="..."``, ``error_code="..."`` or a class's ``code = "..."``: each must be a
    registry member, so that a new code cannot be raised without a status and a meaning."""
    grep = re.compile(r"""\bcode(?:: str)?\s*=\s*["']""")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if grep.search(line)
    ]
    for path, tree in _sources():
        for node in ast.walk(tree):
            values: list[ast.expr] = []
            if isinstance(node, ast.Call):
                values = [k.value for k in node.keywords if k.arg in ("code", "error_code")]
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value:
                        targets = (
                            statement.targets
                            if isinstance(statement, ast.Assign)
                            else [statement.target]
                        )
                        if any(isinstance(t, ast.Name) and t.id == "code" for t in targets):
                            values.append(statement.value)
            found += [
                f"{path.relative_to(ROOT)}:{value.lineno}"
                for value in values
                if isinstance(value, ast.Constant)
            ]
    assert found == []


def test_class_defaults_have_their_class_status() -> None:
    for cls in _error_classes().values():
        if cls in STATUS_EXCEPTIONS:
            continue
        assert ErrorCode(cls.code).status == cls.status, cls


def test_each_raise_site_names_a_code_of_its_exception_status() -> None:
    """A code passed to an exception has that exception's status in the registry; a raise
    site that names none relies on its class's default, which must not be a fallback."""
    classes = _error_classes()
    wrong: list[str] = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in classes
            ):
                continue
            cls = classes[node.func.id]
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            given = [k.value for k in node.keywords if k.arg == "code"]
            if not given:
                if ErrorCode(cls.code).where is Where.FALLBACK:
                    wrong.append(f"{where}: {cls.__name__} without a code")
                continue
            code = _member(given[0])
            if not isinstance(code, ErrorCode):
                wrong.append(f"{where}: code is not an ErrorCode member")
            elif code.status != cls.status:
                wrong.append(f"{where}: {code} is {code.status}, {cls.__name__} {cls.status}")
    assert wrong == []


def test_docs_errors_table_is_the_registry() -> None:
    text = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    start = text.index("| status | `code` | when |")
    end = text.index("\n\n", start)
    assert text[start : end + 1] == markdown_table(), (
        "docs/http-api.md's errors table differs from shared/error_codes.py; paste in "
        "the output of: python -c 'from shared.error_codes import markdown_table as t; "
        'print(t(), end="")\''
    )


def test_limits_quoted_in_the_registry_are_the_code_s() -> None:
    assert f"deeper than {MAX_JSON_DEPTH} levels" in ErrorCode.JSON_TOO_DEEP.when
    assert f"more than {MAX_JSON_VALUES:,} values" in ErrorCode.JSON_TOO_COMPLEX.when
    assert f"more than {MAX_FORM_PARTS} parts" in ErrorCode.INVALID_MULTIPART.when
    assert MAX_TEXT_PART_BYTES == 1024 * 1024 and "over 1 MiB" in ErrorCode.BODY_TOO_LARGE.when
    assert f"longer than {MAX_IDEMPOTENCY_KEY_CHARS}" in ErrorCode.INVALID_IDEMPOTENCY_KEY.when


def test_codes_serialise_as_their_plain_string() -> None:
    import json

    assert json.dumps({"code": ErrorCode.QUEUE_FULL}) == '{"code": "queue_full"}'
    assert f"urn:sightline:problem:{ErrorCode.QUEUE_FULL}" == "urn:sightline:problem:queue_full"
    assert str(JobErrorCode.WORKER_LOST) == "worker_lost"


def test_docs_name_every_job_error_code() -> None:
    text = (ROOT / "docs" / "http-api.md").read_text(encoding="utf-8")
    start = text.index('`{"code", "message"}` when failed')
    listed = set(re.findall(r"`([a-z_]+)`", text[start : text.index("\n\n", start)]))
    assert listed == {code.value for code in JobErrorCode}
