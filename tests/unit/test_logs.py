"""JSON log lines: their fields, and that secrets and image bytes never reach them."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from api import create_app
from cli.redis_server import free_port
from migrations import upgrade
from shared.db import create_engine_for, session_factory, transaction
from shared.keys import create_key
from shared.logs import JsonFormatter, log_context
from shared.settings import Settings


def _line(record: logging.LogRecord, **static: str) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(JsonFormatter("worker", static).format(record))
    return parsed


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": msg, "args": args})
    record.__dict__.update(extra)
    return record


def test_a_line_carries_process_context_and_extra_fields() -> None:
    with log_context(batch_id="b1"):
        line = _line(_record("job %s done", "j1", job_id="j1"), worker="gpu0@h", device="0")
    assert line["message"] == "job j1 done"
    assert line["level"] == "INFO"
    assert line["role"] == "worker"
    assert (line["worker"], line["device"], line["batch_id"], line["job_id"]) == (
        "gpu0@h",
        "0",
        "b1",
        "j1",
    )
    assert "batch_id" not in _line(_record("later"))


def test_secrets_and_payloads_are_redacted() -> None:
    key = "sl_" + "k" * 43
    secret = "whsec_" + base64.b64encode(b"s" * 24).decode()
    image = base64.b64encode(bytes(range(256)) * 4).decode()
    line = _line(
        _record(
            "auth Bearer %s secret %s body %s",
            "tok3n",
            secret,
            image,
            api_key=key,
            raw=b"\x89PNG" * 100,
            nested={"images": [image]},
        )
    )
    text = json.dumps(line)
    for leaked in (key, secret, "tok3n", image[:100]):
        assert leaked not in text
    assert line["raw"] == "<400 bytes>"
    assert "Bearer [redacted]" in str(line["message"])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0", log_level="DEBUG"
    )


def test_a_submission_logs_neither_the_key_nor_the_image(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    upgrade(settings)
    engine = create_engine_for(settings)
    with transaction(session_factory(engine)) as session:
        _, key = create_key(session, "logs")
    engine.dispose()
    png = io.BytesIO()
    Image.effect_noise((64, 64), 100).convert("RGB").save(png, format="PNG")
    image = base64.b64encode(png.getvalue()).decode()
    client = create_app(settings).test_client()
    capsys.readouterr()

    response = client.post(
        "/v1/jobs",
        json={"image": image, "prompt": "hi"},
        headers={"Authorization": f"Bearer {key}"},
    )

    assert response.status_code == 202
    err = capsys.readouterr().err
    assert err.strip(), "expected log lines (the broker is down, the job is committed)"
    for raw in err.strip().splitlines():
        json.loads(raw)  # one JSON object per line
    assert key not in err
    assert image[:64] not in err
