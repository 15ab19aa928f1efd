"""The README stays a front page and no relative link in it or in docs/ points nowhere.

`make docs` (mkdocs build --strict) checks the links between pages of the site; this also
covers the README, which the site does not contain, and runs with the unit tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Written into the site by docs/hooks/openapi.py at build time, not kept in the tree.
GENERATED = {DOCS / "openapi.json"}

TWO_COMMANDS = """# sightline

```sh
make demo   # builds everything, runs API + worker on embedded defaults, prints results
make test   # unit + integration tests against real PostgreSQL, Redis and worker processes
```
"""

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[(?:[^\]\n]|`[^`\n]*`)*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
# A repository file named in code spans: `tests/unit/test_ssrf.py`, `docker/compose.yaml`.
FILE_IN_CODE = re.compile(
    r"\b(?:api|bench|cli|client|docker|docs|migrations|shared|tests|worker)/"
    r"[A-Za-z0-9_./-]*\.(?:py|ya?ml|json|md|Dockerfile)\b"
)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (MkDocs, and GitHub alike) gives a heading."""
    text = heading.replace("`", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(h) for h in HEADING.findall(text)}


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    # Links whose text is inline code still count; code spans elsewhere hold no links.
    found = LINK.findall(text)
    return [target for target in found if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; the reference goes in docs/"


def test_readme_opens_with_the_two_commands() -> None:
    assert README.read_text(encoding="utf-8").startswith(TWO_COMMANDS)


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings(page: Path) -> None:
    broken = []
    for target in _links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if dest not in GENERATED and not dest.is_file():
            broken.append(f"{target}: no file {dest.relative_to(ROOT)}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_named_in_code_exist(page: Path) -> None:
    """A page that names `worker/claims.py` or a test file must follow it when it moves."""
    spans = INLINE_CODE.findall(page.read_text(encoding="utf-8"))
    named = {path for span in spans for path in FILE_IN_CODE.findall(span)}
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def test_link_checker_sees_links() -> None:
    """Guard against a regex that silently finds nothing."""
    targets = _links(README)
    assert "docs/http-api.md" in targets
    assert "docs/index.md#guarantees" in targets
    assert _slug("`GET /v1/jobs`") == "get-v1jobs"
    assert FILE_IN_CODE.findall("`tests/unit/test_ssrf.py` and `docker/api.Dockerfile`") == [
        "tests/unit/test_ssrf.py",
        "docker/api.Dockerfile",
    ]


def test_openapi_hook_publishes_the_default_document(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("docs_openapi_hook", DOCS / "hooks/openapi.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    monkeypatch.setenv("SIGHTLINE_MAX_PROMPT_CHARS", "123")
    document = hook._document()
    assert document["openapi"].startswith("3.1")
    assert "/v1/jobs" in document["paths"]
    # The builder's environment does not leak into the published limits, and is restored.
    text = json.dumps(document)
    assert '"maxLength": 8000' in text
    assert '"maxLength": 123' not in text
    assert os.environ["SIGHTLINE_MAX_PROMPT_CHARS"] == "123"
