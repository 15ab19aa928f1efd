"""The API's door, through Flask's test client on a SQLite file (no broker running)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image

from api import create_app
from cli.redis_server import free_port
from migrations import upgrade
from shared.db import create_engine_for, session_factory, transaction
from shared.keys import create_key
from shared.models import EventStatus, WebhookEvent, utcnow
from shared.settings import Settings
from tests.prometheus import parse, total


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        broker_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        max_image_bytes=4096,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[FlaskClient]:
    upgrade(settings)
    yield create_app(settings).test_client()


@pytest.fixture
def key(settings: Settings, client: FlaskClient) -> str:
    engine = create_engine_for(settings)
    with transaction(session_factory(engine)) as session:
        _, plaintext = create_key(session, "unit")
    engine.dispose()
    return plaintext


def png(size: tuple[int, int] = (16, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "green").save(out, format="PNG")
    return out.getvalue()


def test_job_is_accepted_while_the_broker_is_down(client: FlaskClient, key: str) -> None:
    response = client.post(
        "/v1/jobs",
        json={"image": base64.b64encode(png()).decode(), "prompt": "hi"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 202
    job = client.get(response.headers["Location"], headers={"Authorization": f"Bearer {key}"})
    assert job.get_json()["status"] == "queued"


def test_image_over_the_byte_limit_is_413(client: FlaskClient, key: str) -> None:
    noisy = io.BytesIO()
    Image.effect_noise((64, 64), 100).convert("RGB").save(noisy, format="PNG")
    assert len(noisy.getvalue()) > 4096
    response = client.post(
        "/v1/jobs",
        data={"prompt": "hi", "image": (io.BytesIO(noisy.getvalue()), "n.png")},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 413
    assert response.get_json()["code"] == "image_too_large"


def test_body_over_the_limit_is_413_problem(client: FlaskClient, key: str) -> None:
    response = client.post(
        "/v1/jobs",
        json={"image": "A" * 400_000, "prompt": "hi"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == "body_too_large"


def test_routing_errors_are_problems_too(client: FlaskClient, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/nowhere").get_json()["status"] == 404
    wrong_method = client.put("/v1/jobs", headers=auth)
    assert wrong_method.status_code == 405
    assert wrong_method.mimetype == "application/problem+json"


def test_revoked_or_malformed_keys_are_401(client: FlaskClient, key: str) -> None:
    for header in ["", "Bearer", f"Basic {key}", "Bearer sl_wrong"]:
        response = client.get("/v1/jobs/x", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.mimetype == "application/problem+json"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert "broker unreachable" in not_ready.get_json()["detail"]


def test_database_down_is_a_quick_503_problem(tmp_path: Path) -> None:
    down = Settings(
        data_dir=tmp_path, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    )
    client = create_app(down).test_client()
    auth = {"Authorization": "Bearer sl_anything"}

    for response in (
        client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=auth),
        client.post("/v1/jobs", json={"image": "", "prompt": "x"}, headers=auth),
        client.get("/readyz"),
    ):
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["code"] == "service_unavailable"


def test_callback_to_a_name_resolving_to_loopback_is_422(client: FlaskClient, key: str) -> None:
    response = client.post(
        "/v1/jobs",
        data={
            "prompt": "hi",
            "callback_url": "http://localhost:9/hook",
            "image": (io.BytesIO(png()), "a.png"),
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 422
    assert response.get_json()["code"] == "forbidden_destination"
    # The refusal says why without telling the caller what the name resolves to.
    detail = response.get_json()["detail"]
    assert "non-public address" in detail
    assert "127.0.0.1" not in detail and "::1" not in detail


def test_metrics_count_undelivered_webhook_events_and_their_lag(
    settings: Settings, client: FlaskClient
) -> None:
    engine = create_engine_for(settings)
    with transaction(session_factory(engine)) as session:
        api_key, _ = create_key(session, "hooks")
        now = utcnow()
        for number, (status, age_s) in enumerate(
            [
                (EventStatus.PENDING, 90),
                (EventStatus.PENDING, 0),
                (EventStatus.FAILED, 3600),
                (EventStatus.DELIVERED, 7200),
            ]
        ):
            session.add(
                WebhookEvent(
                    id=f"msg_{number}",
                    tenant_id=api_key.tenant_id,
                    type="job.succeeded",
                    url="https://hooks.example/",
                    payload="{}",
                    status=status,
                    created_at=now - timedelta(seconds=age_s),
                )
            )
    engine.dispose()

    samples = parse(client.get("/metrics").text)

    assert total(samples, "sightline_database_up") == 1
    assert total(samples, "sightline_webhook_events", status="pending") == 2
    assert total(samples, "sightline_webhook_events", status="failed") == 1
    # The oldest pending one, not the older failed or delivered ones.
    assert 90 <= total(samples, "sightline_webhook_oldest_pending_seconds") < 600
