"""docker/compose.yaml parses with a real compose implementation, and says what it must.

No Docker engine runs here and no image is built: Debian's ``docker-compose`` (v1)
validates and resolves the file with ``config`` without one (``make system-deps``
installs it). The Grafana dashboard must only chart metrics the code exports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
SERVICES = {"postgres", "redis", "migrations", "api", "webhooks", "beat", "flower"}


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Debian's, parses without an engine) is not installed")
    return subprocess.run(
        [binary, "-f", str(COMPOSE), "config"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_compose_file_is_valid_and_complete() -> None:
    done = _config({"FLOWER_BASIC_AUTH": "admin:secret"})
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker-gpu")}
    assert set(services) >= SERVICES and workers
    for name, service in services.items():
        assert name == "migrations" or "healthcheck" in service, f"{name} has no healthcheck"
    cards = []
    for service in workers.values():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]
        cards += device["device_ids"]
    assert len(cards) == len(set(cards)) == len(workers), "one distinct GPU per worker"


def test_flower_refuses_to_start_without_basic_auth() -> None:
    done = _config({})
    assert done.returncode != 0
    assert "FLOWER_BASIC_AUTH" in done.stderr


def test_dashboard_charts_only_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "docker" / "grafana" / "sightline.json").read_text())
    charted = {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"sightline_\w+", target["expr"])
    }
    sources = "".join(
        (ROOT / path).read_text()
        for path in ("api/metrics.py", "worker/metrics.py", "worker/launcher.py")
    )
    exported = set(re.findall(r'"(sightline_\w+)"', sources))
    assert charted and charted <= exported, charted - exported
