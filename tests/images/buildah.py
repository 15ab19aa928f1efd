"""buildah as the test's container engine: images from Dockerfiles, processes from images.

No Docker engine runs on these machines. buildah (Debian's package, run as root) builds a
Dockerfile with ``--storage-driver vfs --isolation chroot``, and runs commands in a working
container of an image it built: the image's files, user, environment and working
directory. Everything shares the host's network (``--network host``), so the processes in
the images reach the test's PostgreSQL and Redis on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

STORAGE = ("--storage-driver", "vfs")
ISOLATION = ("--isolation", "chroot")


def buildah(*args: str, timeout_s: float = 600) -> str:
    """Run ``buildah ARGS`` on the vfs storage; its stdout, or ``RuntimeError``."""
    done = subprocess.run(
        ["buildah", *STORAGE, *args], capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def build(
    dockerfile: Path,
    tag: str,
    context: Path,
    *,
    build_args: dict[str, str],
    volumes: list[str],
    log: Path,
) -> float:
    """Build ``dockerfile`` as ``tag`` (Docker format: OCI drops HEALTHCHECK); the seconds
    it took. ``volumes`` are bind mounts every RUN step sees and no layer keeps."""
    command = ["buildah", *STORAGE, "bud", *ISOLATION, "--format", "docker"]
    command += ["--network", "host", "--layers=false", "-f", str(dockerfile), "-t", tag]
    for name, value in build_args.items():
        command += ["--build-arg", f"{name}={value}"]
    for volume in volumes:
        command += ["--volume", volume]
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run([*command, str(context)], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"building {dockerfile.name} failed (log: {log}):\n{tail}")
    return time.monotonic() - started


def exists(image: str) -> bool:
    """Whether ``image`` is in the local storage."""
    return (
        subprocess.run(
            ["buildah", *STORAGE, "inspect", "--type", "image", image], capture_output=True
        ).returncode
        == 0
    )


def image_config(image: str) -> dict[str, Any]:
    """The image's Docker config: User, Env, Cmd, Healthcheck, WorkingDir…"""
    config: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", image))["Docker"][
        "config"
    ]
    return config


def image_size(image: str) -> str:
    """The image's size as buildah reports it (all layers, uncompressed), e.g. "380 MB"."""
    size: str = json.loads(buildah("images", "--json", image))[0]["size"]
    return size


def remove_image(image: str) -> None:
    """Remove ``image`` and whatever older builds left untagged (vfs copies every layer
    in full: they add up)."""
    buildah("rmi", image)
    buildah("rmi", "--prune")


class Container:
    """A working container of ``image`` (``buildah from``): a copy of its files, in which
    commands run as the image's user, with its environment plus :meth:`set_env`."""

    def __init__(self, image: str, name: str) -> None:
        self.image = image
        self.name = buildah("from", "--pull-never", "--name", name, image).strip()
        self._processes: list[subprocess.Popen[bytes]] = []

    def set_env(self, env: dict[str, str]) -> None:
        """Add ``env`` to the environment of every command run from now on."""
        buildah("config", *(f"--env={name}={value}" for name, value in env.items()), self.name)

    def _command(self, args: list[str], volumes: list[str]) -> list[str]:
        command = ["buildah", *STORAGE, "run", *ISOLATION, "--network", "host"]
        for volume in volumes:
            command += ["--volume", volume]
        return [*command, self.name, "--", *args]

    def run(
        self, *args: str, volumes: list[str] | None = None, timeout_s: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in the container to the end, whatever its exit status."""
        return subprocess.run(
            self._command(list(args), volumes or []),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def start(
        self, args: list[str], log: Path, volumes: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in the container in the background (own process group), output
        to ``log``; :meth:`remove` stops it."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(
                self._command(args, volumes or []),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._processes.append(process)
        return process

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """Run the image's HEALTHCHECK command once, as an engine would, in the container."""
        test = image_config(self.image)["Healthcheck"]["Test"]
        args = ["/bin/sh", "-c", test[1]] if test[0] == "CMD-SHELL" else test[1:]
        return self.run(*args, timeout_s=60)

    def mounted(self) -> Path:
        """The container's root file system, mounted on the host."""
        return Path(buildah("mount", self.name).strip())

    def stop(self) -> None:
        """Stop every process started here (SIGTERM to its group: graceful; SIGKILL after
        60 s)."""
        for process in self._processes:
            stop(process)
        self._processes.clear()

    def remove(self) -> None:
        """Stop its processes, then remove the container."""
        self.stop()
        buildah("rm", self.name)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """SIGTERM ``process``'s whole group: buildah and what it runs in the container alike
    (SIGTERM to buildah alone kills its command without a graceful stop)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
