"""MkDocs hook: put the OpenAPI document the code builds into the site as ``openapi.json``.

``docs/openapi.md`` renders it with Swagger UI (``mkdocs-swagger-ui-tag``). The document is
built with default settings: ``SIGHTLINE_*`` variables in the environment of whoever runs
``make docs`` do not leak into the published limits.
"""

from __future__ import annotations

import json
import os
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files


def _document() -> dict[str, Any]:
    from api.openapi import build_document
    from shared.settings import Settings

    saved = {k: v for k, v in os.environ.items() if k.startswith("SIGHTLINE_")}
    for key in saved:
        del os.environ[key]
    try:
        return build_document(Settings())
    finally:
        os.environ.update(saved)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    content = json.dumps(_document(), indent=2, sort_keys=False) + "\n"
    files.append(File.generated(config, "openapi.json", content=content))
    return files
