"""docker/compose.yaml parses with a real compose implementation, and says what it must.

No Docker engine runs here: Debian's ``docker-compose`` (v1) validates and resolves the
file with ``config`` without one (``make system-deps`` installs it). The images are built
and run by ``make docker-test`` (tests/images), from the builds this file names. The
Grafana dashboard must only chart metrics the code exports. The stack runs in production
mode and every secret comes from the environment: the file refuses to
resolve without one, so nobody runs it on the public development defaults.
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
SECRETS = {
    "SIGHTLINE_SECRET_KEY": "a-real-secret-from-the-operator",
    "SIGHTLINE_METRICS_TOKEN": "a-metrics-token",
    "FLOWER_BASIC_AUTH": "admin:secret",
    "GRAFANA_ADMIN_PASSWORD": "a-grafana-password",
}


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


def _services() -> dict[str, Any]:
    done = _config(SECRETS)
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    return services


def test_compose_file_is_valid_and_complete() -> None:
    services = _services()
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


def test_services_run_two_images_built_as_make_docker_test_builds_them() -> None:
    services = _services()
    builds = {name: service["build"] for name, service in services.items() if "build" in service}
    assert set(builds) >= SERVICES - {"postgres", "redis"}
    by_image: dict[str, Any] = {}
    for name, build in builds.items():
        # One image name, one build: every service of an image runs the same build.
        assert by_image.setdefault(services[name]["image"], build) == build, name
    assert {build["dockerfile"] for build in by_image.values()} == {
        "docker/api.Dockerfile",
        "docker/worker.Dockerfile",
    }
    for build in by_image.values():
        assert Path(build["context"]) == ROOT
        # The test overrides BASE_IMAGE only; here it is the Dockerfile's own default.
        dockerfile = (ROOT / build["dockerfile"]).read_text()
        default = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M)
        assert default is not None and build["args"] == {"BASE_IMAGE": default.group(1)}


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_run_without_each_secret(missing: str) -> None:
    done = _config({name: value for name, value in SECRETS.items() if name != missing})
    assert done.returncode != 0
    assert missing in done.stderr


def test_sightline_services_run_in_production_mode_with_the_given_secret() -> None:
    services = _services()
    sightline = {
        name: service["environment"]
        for name, service in services.items()
        if "SIGHTLINE_DATABASE_URL" in service.get("environment", {})
    }
    assert set(sightline) >= SERVICES - {"postgres", "redis"}
    for name, env in sightline.items():
        # Production mode is what makes the processes refuse the development secret.
        assert env["SIGHTLINE_ENVIRONMENT"] == "production", name
        assert env["SIGHTLINE_SECRET_KEY"] == SECRETS["SIGHTLINE_SECRET_KEY"], name
    assert services["api"]["environment"]["SIGHTLINE_METRICS_TOKEN"] == "a-metrics-token"
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["GRAFANA_ADMIN_PASSWORD"]


def test_prometheus_scrapes_with_the_token_and_listens_on_loopback_only() -> None:
    services = _services()
    prometheus = services["prometheus"]
    # The metrics it holds are readable without a login: never on the host's public side.
    assert all(str(port).startswith("127.0.0.1:") for port in prometheus["ports"])
    assert (
        prometheus["environment"]["SIGHTLINE_METRICS_TOKEN"] == SECRETS["SIGHTLINE_METRICS_TOKEN"]
    )
    scrapes = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())["scrape_configs"]
    [api] = [job for job in scrapes if job["job_name"] == "sightline-api"]
    token_file = api["authorization"]["credentials_file"]
    assert api["authorization"].get("type", "Bearer") == "Bearer"
    # The entrypoint writes the token from the environment to the file the scrape reads.
    assert f"> {token_file}" in " ".join(prometheus["entrypoint"])
    assert "SIGHTLINE_METRICS_TOKEN" in " ".join(prometheus["entrypoint"])
    # Workers listen on the compose network (where Prometheus is), not only loopback.
    [workers] = [job for job in scrapes if job["job_name"] == "sightline-worker"]
    for target in workers["static_configs"][0]["targets"]:
        worker = services[target.split(":")[0]]
        assert worker["environment"]["SIGHTLINE_WORKER_METRICS_HOST"] == "0.0.0.0"


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
