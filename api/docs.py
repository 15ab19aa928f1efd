"""``GET /openapi.json`` and ``GET /docs``: the API contract and its interactive page.

The UI is Swagger UI 5.31.0 (Apache-2.0) as shipped inside the ``swagger-ui-bundle-v2``
wheel: no CDN, so the page works offline and behind strict egress rules. Only the three
files the page needs are served. The page and its start-up script are ours, small enough
to live here; the Content-Security-Policy allows scripts from this origin only.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, json, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from api.context import services
from api.openapi import build_document

docs = Blueprint("docs", __name__)

_ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
# Swagger UI sets inline styles and shows schema images as data: URLs.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>sightline API</title>
  <link rel="icon" href="/docs/assets/favicon-32x32.png">
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/start.js"></script>
</body>
</html>
"""
# The key typed into "Authorize" stays in the page's memory (persistAuthorization off).
_START = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: false,
  validatorUrl: null
});
"""


@docs.get("/docs")
def page() -> Response:
    """The documentation page (HTML)."""
    return Response(_PAGE, mimetype="text/html", headers={"Content-Security-Policy": _CSP})


@docs.get("/docs/start.js")
def start() -> Response:
    """Starts Swagger UI on ``/openapi.json``."""
    return Response(_START, mimetype="text/javascript")


@docs.get("/docs/assets/<name>")
def asset(name: str) -> Response:
    """One of Swagger UI's files, cached for a day; 404 for any other name."""
    if name not in _ASSETS:
        abort(404)
    return send_from_directory(str(swagger_ui_path), name, max_age=86_400)


@docs.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3.1 document, built once per process (its settings do not change)."""
    cached = current_app.extensions.get("sightline.openapi")
    if cached is None:
        cached = json.dumps(build_document(services().settings))
        current_app.extensions["sightline.openapi"] = cached
    return Response(cached, mimetype="application/json")
