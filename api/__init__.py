"""The HTTP API: a Flask app factory. Never imports torch (it enqueues by task name)."""

from __future__ import annotations

from flask import Flask

from api.batches import batches
from api.console import console
from api.context import Services
from api.deliveries import deliveries, tenant_deliveries
from api.docs import docs
from api.endpoints import endpoints
from api.errors import register_error_handlers
from api.health import health
from api.jobs import jobs
from api.metrics import instrument
from api.streams import streams
from shared.settings import Settings

# base64 inflates by 4/3; leave room for the JSON/multipart envelope and the prompt.
_BODY_OVERHEAD_BYTES = 256 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for ``settings`` (read from the environment when not given).

    Connects nothing at build time: the engine and the broker connect lazily on first use.
    """
    settings = settings or Settings()
    app = Flask("sightline")
    app.secret_key = settings.secret_key
    app.config["MAX_CONTENT_LENGTH"] = settings.max_image_bytes * 4 // 3 + _BODY_OVERHEAD_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["sightline"] = Services.build(settings)
    instrument(app)
    register_error_handlers(app)
    app.register_blueprint(health)
    app.register_blueprint(jobs)
    app.register_blueprint(streams)
    app.register_blueprint(deliveries)
    app.register_blueprint(tenant_deliveries)
    app.register_blueprint(endpoints)
    app.register_blueprint(docs)
    app.register_blueprint(batches)
    app.register_blueprint(console)
    return app
