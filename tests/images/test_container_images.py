"""The images of docker/ build and run: one job through the API, worker and webhooks images.

``make docker-test`` runs this (minutes and several GB; not part of ``make test``). Both
images are built with buildah, exactly as docker/compose.yaml builds them (its Dockerfiles
and build arguments) except for the base, a local Debian bookworm (tests/images/sources.py).
Then, each in a container of its image on the host's network, against this test's own
PostgreSQL database and Redis server: the migrations, the API (``/readyz``; the image's
healthcheck), a worker on the tiny checkpoint (until the image's healthcheck passes) and
the webhooks process. One job submitted over HTTP must succeed and its signed webhook
arrive. Image sizes, build times and the job's result are printed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from standardwebhooks.webhooks import Webhook

from cli.processes import wait_http_ok
from cli.redis_server import RedisServer, free_port
from client import Client
from tests.images import buildah
from tests.images.sources import BUILD_PIP, CACHE, ROOT, base_image, pip_build_inputs
from tests.receiver import Receiver
from tests.services import postgres_server, scratch_database
from tests.stack import make_image
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    os.environ.get("SIGHTLINE_DOCKER_TEST") != "1",
    reason="builds and runs the container images (minutes, GBs of disk): make docker-test",
)

COMPOSE = ROOT / "docker" / "compose.yaml"
# The images' user (useradd --uid in both Dockerfiles): owns the folders mounted for writing.
IMAGE_UID = 10001


@dataclass(frozen=True)
class Image:
    """An image built from one of compose's builds."""

    tag: str
    dockerfile: str
    build_s: float


def compose_builds() -> dict[str, dict[str, Any]]:
    """compose's builds by Dockerfile: ``{"dockerfile": …, "args": {…}}``, one per image."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    builds: dict[str, dict[str, Any]] = {}
    for name, service in services.items():
        if "build" not in service:
            continue
        build = {"dockerfile": service["build"]["dockerfile"], "args": service["build"]["args"]}
        assert builds.setdefault(build["dockerfile"], build) == build, f"{name}: another build"
    return builds


def compose_command(service: str) -> list[str]:
    """The command compose runs for ``service`` (given in compose.yaml, not the image's)."""
    command: list[str] = yaml.safe_load(COMPOSE.read_text())["services"][service]["command"]
    return command


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, Image]]:
    """The API and worker images, built; printed with their sizes. Removed afterwards (the
    cached base stays)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base = base_image()
    print(f"\nbase {base} ready in {time.monotonic() - started:.0f} s")
    pip_args, volumes = pip_build_inputs()
    built: dict[str, Image] = {}
    try:
        for dockerfile, build in compose_builds().items():
            name = Path(dockerfile).name.removesuffix(".Dockerfile")
            tag = f"localhost/sightline-{name}:docker-test"
            seconds = buildah.build(
                ROOT / dockerfile,
                tag,
                ROOT,
                build_args={**build["args"], **pip_args, "BASE_IMAGE": base},
                volumes=volumes,
                log=CACHE / f"{name}-build.log",
            )
            built[name] = Image(tag, dockerfile, seconds)
            print(f"\nbuilt {tag} from {dockerfile} in {seconds:.0f} s: {buildah.image_size(tag)}")
        yield built
    finally:
        for image in built.values():
            buildah.remove_image(image.tag)


@pytest.fixture(scope="module")
def containers(images: dict[str, Image]) -> Iterator[dict[str, buildah.Container]]:
    """One working container per image; every process started in one is stopped after."""
    started: dict[str, buildah.Container] = {}
    try:
        for name, image in images.items():
            started[name] = buildah.Container(image.tag, f"sightline-{name}-docker-test")
        yield started
    finally:
        for container in started.values():
            container.remove()


def test_images_run_as_a_user_with_healthchecks_and_keep_no_build_inputs(
    images: dict[str, Image], containers: dict[str, buildah.Container]
) -> None:
    for name, image in images.items():
        config = buildah.image_config(image.tag)
        assert config["User"] == "sightline", name
        assert config["Healthcheck"]["Test"][0] in ("CMD", "CMD-SHELL"), name
        assert not [env for env in config["Env"] if env.startswith("PIP_")], name
        root = containers[name].mounted()
        # The build stage's sources and pip's mounts (under /run/pip) never reach an image.
        assert not (root / "src").exists() and not (root / BUILD_PIP[1:]).exists(), name
        assert [path.name for path in (root / "opt").iterdir()] == ["venv"], name
    # The venv's Python is the base's own (a Debian package here), not one installed.
    python = containers["worker"].run("sh", "-c", 'dpkg -S "$(readlink -f /opt/venv/bin/python)"')
    assert python.returncode == 0 and python.stdout.startswith("python3.11"), python
    versions = containers["worker"].run(
        "python",
        "-c",
        "import torch, torchvision; print(torch.__version__, "
        "torchvision.__version__, torch.version.cuda)",
    )
    torch, torchvision, cuda = versions.stdout.split()
    # The CUDA build: 2.14.1+cu130 and its CUDA version, where a CPU build says None.
    releases = (torch.split("+")[0], torchvision.split("+")[0])
    assert releases == ("2.14.1", "0.29.1") and cuda != "None", versions
    print(f"\nworker image: torch {torch} (CUDA {cuda}), torchvision {torchvision}")
    # The API never imports torch (DESIGN): its image does not even carry it.
    api_torch = containers["api"].run("python", "-c", "import torch")
    assert "No module named 'torch'" in api_torch.stderr, api_torch


@pytest.fixture
def services(tmp_path: Path) -> Iterator[dict[str, str]]:
    """This test's own PostgreSQL database and Redis server, as the images' settings."""
    with (
        postgres_server() as admin,
        scratch_database(admin) as url,
        RedisServer(free_port()) as redis,
    ):
        yield {
            "SIGHTLINE_ENVIRONMENT": "production",
            "SIGHTLINE_SECRET_KEY": secrets.token_hex(32),
            "SIGHTLINE_METRICS_TOKEN": secrets.token_hex(16),
            "SIGHTLINE_DATABASE_URL": url,
            "SIGHTLINE_BROKER_URL": redis.url,
            "SIGHTLINE_BLOB_URL": "/data/blobs",
            # The webhook receiver below listens on loopback.
            "SIGHTLINE_OUTBOUND_ALLOWLIST": "127.0.0.1",
        }


def _owned_folder(path: Path) -> Path:
    """``path``, made and given to the images' user (it writes there)."""
    path.mkdir(parents=True)
    os.chown(path, IMAGE_UID, IMAGE_UID)
    return path


def test_one_job_runs_through_the_api_worker_and_webhooks_images(
    containers: dict[str, buildah.Container], services: dict[str, str], tmp_path: Path
) -> None:
    api, worker = containers["api"], containers["worker"]
    blobs = f"{_owned_folder(tmp_path / 'blobs')}:/data/blobs"
    models = f"{_owned_folder(tmp_path / 'models')}:/models"
    logs = tmp_path / "logs"
    port, metrics_port = free_port(), free_port()
    api.set_env({**services, "PORT": str(port)})
    worker.set_env(
        {
            **services,
            "SIGHTLINE_DEVICES": "cpu",
            "SIGHTLINE_MODEL_PATH": "/models/tiny-glm4v",
            "SIGHTLINE_WORKER_METRICS_PORT": str(metrics_port),
        }
    )
    receiver = Receiver(free_port()).start()
    try:
        migrated = api.run(*compose_command("migrations"))
        assert migrated.returncode == 0, migrated.stderr
        created = api.run(
            "sightline", "keys", "create", "docker-test", "--json", "--callback-url", receiver.url
        )
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)

        server = api.start(buildah.image_config(api.image)["Cmd"], logs / "api.log", [blobs])
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", timeout_s=120, process=server)
        assert api.healthcheck().returncode == 0

        tiny = worker.run(
            "sightline", "model", "build-tiny", "/models/tiny-glm4v", volumes=[models]
        )
        assert tiny.returncode == 0, tiny.stderr
        worker.start(
            buildah.image_config(worker.image)["Cmd"], logs / "worker.log", [blobs, models]
        )
        wait_until(
            lambda: worker.healthcheck().returncode == 0,
            timeout_s=300,
            what="the worker image's healthcheck",
            interval_s=2,
        )
        api.start(compose_command("webhooks"), logs / "webhooks.log")

        client = Client(f"http://127.0.0.1:{port}", key["key"])
        job = client.wait(client.submit(make_image(0), "What is this?")["id"], timeout_s=300)
        print(f"\njob {job['id']}: {job['status']}, result {job['result']!r}")
        assert job["status"] == "succeeded", job

        [delivery] = receiver.wait_for(1, timeout_s=120)
        payload = Webhook(key["webhook_secret"]).verify(delivery.body, delivery.headers)
        assert (payload["type"], payload["data"]["id"]) == ("job.succeeded", job["id"])
    except BaseException:
        for log in sorted(logs.glob("*.log")):
            print(f"\n--- {log.name} (last lines)\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        api.stop()
        worker.stop()
        receiver.stop()
        shutil.rmtree(tmp_path / "models", ignore_errors=True)
