"""Settings come from SIGHTLINE_* variables, with embedded defaults under the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings


def test_embedded_defaults_live_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("DATABASE_URL", "BLOB_URL", "MODEL_PATH", "BROKER_URL"):
        monkeypatch.delenv(f"SIGHTLINE_{name}", raising=False)
    monkeypatch.setenv("SIGHTLINE_DATA_DIR", str(tmp_path))

    settings = Settings()

    assert settings.database_url == f"sqlite:///{tmp_path / 'sightline.db'}"
    assert settings.blob_url == str(tmp_path / "blobs")
    assert settings.model_path == str(tmp_path / "models" / "tiny-glm4v")
    assert settings.broker_url == "redis://127.0.0.1:6399/0"
    assert (settings.max_batch_size, settings.max_batch_wait_ms) == (8, 20)
    assert settings.is_sqlite


def test_contract_names_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGHTLINE_DATABASE_URL", "postgresql://db/sightline")
    monkeypatch.setenv("SIGHTLINE_BROKER_URL", "redis://redis:6379/3")
    monkeypatch.setenv("SIGHTLINE_BLOB_URL", "s3://bucket/images")
    monkeypatch.setenv("SIGHTLINE_MODEL_PATH", "/models/glm")
    monkeypatch.setenv("SIGHTLINE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("SIGHTLINE_MAX_BATCH_WAIT_MS", "5")
    monkeypatch.setenv("SIGHTLINE_DEVICES", "cpu,cpu")

    settings = Settings()

    assert settings.database_url == "postgresql://db/sightline"
    assert settings.broker_url == "redis://redis:6379/3"
    assert settings.blob_url == "s3://bucket/images"
    assert settings.model_path == "/models/glm"
    assert (settings.max_batch_size, settings.max_batch_wait_ms) == (16, 5)
    assert settings.devices == "cpu,cpu"
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_BATCH_SIZE", "0"),
        ("MAX_BATCH_WAIT_MS", "-1"),
        ("MAX_BATCH_SIZE", "eight"),
        ("DTYPE", "int8"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"SIGHTLINE_{name}", value)
    with pytest.raises(ValidationError):
        Settings()
