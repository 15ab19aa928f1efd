"""What the image builds start from here: a local bookworm base and the host's pip sources.

The Dockerfiles start from an official Python image, which cannot be pulled here (only the
Debian archive and the Python and npm package registries are reachable). The same
Dockerfiles build on a Debian bookworm root file system made once by debootstrap from the
host's own Debian mirror and cached under ``.cache/docker-test/``. Its Python is Debian's
3.11, the release the official image carries.

pip in the builds uses the host's package sources: where the host's pip finds wheels on
this disk (torch's CUDA build among them), the build gets the same folders as read-only
mounts, so nothing is downloaded again; a CA bundle the host's pip trusts is mounted
read-only too. Neither mounts nor build arguments leave anything in the images.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from tests.images import buildah

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "docker-test"
BASE_IMAGE = "localhost/sightline-test-base:bookworm"
# python:3.11-slim-bookworm has Python with its venv module and the CA certificates.
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
# Where a build sees the host's pip sources and CA bundle (pip_build_inputs).
BUILD_PIP = "/run/pip"
BUILD_CA = f"{BUILD_PIP}/ca.pem"


def debian_mirror() -> str:
    """The host's mirror of Debian's archive (``DEBIAN_MIRROR`` overrides): the first
    ``deb`` source for the suite bookworm in the host's apt sources."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    sources = Path("/etc/apt/sources.list.d")
    for path in [*sorted(sources.glob("*.sources")), Path("/etc/apt/sources.list")]:
        if not path.is_file():
            continue
        text = path.read_text()
        # deb822 stanzas ("URIs: …" and "Suites: … bookworm …")…
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and "bookworm" in suites.group(1).split():
                return uris.group(1)
        # …or one-line "deb [options] URI bookworm main".
        line = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M)
        if line:
            return line.group(1)
    raise RuntimeError("no Debian bookworm source in /etc/apt: set DEBIAN_MIRROR")


def base_image() -> str:
    """The local bookworm base image, made from the cached root file system (debootstrap
    runs only when ``.cache/docker-test/base/rootfs.tar`` is missing)."""
    if buildah.exists(BASE_IMAGE):
        return BASE_IMAGE
    context = CACHE / "base"
    tar = context / "rootfs.tar"
    if not tar.exists():
        _debootstrap(tar)
    buildah.build(
        ROOT / "docker" / "test-base.Dockerfile",
        BASE_IMAGE,
        context,
        build_args={},
        volumes=[],
        log=CACHE / "base-build.log",
    )
    return BASE_IMAGE


def _debootstrap(tar: Path) -> None:
    rootfs = tar.parent / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    tar.parent.mkdir(parents=True, exist_ok=True)
    command = ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm"]
    log = CACHE / "debootstrap.log"
    with log.open("wb") as out:
        done = subprocess.run(
            [*command, str(rootfs), debian_mirror()], stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise RuntimeError(f"debootstrap failed:\n{log.read_text(errors='replace')[-3000:]}")
    # The downloaded packages and the archive's indexes are of no use in an image.
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file():
                path.unlink()
    partial = tar.with_suffix(".partial")
    subprocess.run(
        ["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True
    )
    partial.rename(tar)
    shutil.rmtree(rootfs)


def _host_pip_config() -> dict[str, str]:
    """The host pip's settings by name (``cert``, ``extra-index-url``…): from the
    environment first, then from its configuration files."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    settings: dict[str, tuple[int, str]] = {}
    rank = {":env:": 3, "install": 2, "global": 1}
    for line in listing.splitlines():
        found = re.match(r"^([^.]+)\.([\w-]+)='(.*)'$", line)
        if found is None or found.group(1) not in rank:
            continue
        section, name, value = found.groups()
        if rank[section] > settings.get(name, (0, ""))[0]:
            settings[name] = (rank[section], value)
    return {name: value for name, (_, value) in settings.items()}


def _local_path(location: str) -> Path | None:
    """The file or folder on this disk that a pip location (path or file:// URL) names."""
    path = Path(urlparse(location).path if location.startswith("file:") else location)
    return path if path.is_absolute() and path.exists() else None


def pip_build_inputs() -> tuple[dict[str, str], list[str]]:
    """Build arguments (``PIP_*``) and read-only volumes giving the builds' pip the host's
    package sources and CA bundle. Local ones are mounted under /run/pip, and the
    arguments name them there: buildah gives every RUN step a fresh /run, so no layer
    keeps a mount point (elsewhere each would leave an empty folder in the image)."""
    config = _host_pip_config()
    mounts: dict[Path, str] = {}

    def inside(location: str, mount: Path) -> str:
        """``location`` as the build sees it, with ``mount`` mounted under /run/pip."""
        target = mounts.setdefault(mount, f"{BUILD_PIP}/{len(mounts)}")
        path = f"{target}{str(_local_path(location))[len(str(mount)) :]}"
        return f"file://{path}" if location.startswith("file:") else path

    build_args: dict[str, str] = {}
    for name, variable in (
        ("index-url", "PIP_INDEX_URL"),
        ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
        ("find-links", "PIP_FIND_LINKS"),
    ):
        locations = []
        for location in config.get(name, "").split():
            path = _local_path(location)
            if path is None:
                locations.append(location)
            elif name == "find-links":
                locations.append(inside(location, path))
            else:
                # A local index (…/simple) links to its files beside it: mount its parent.
                locations.append(inside(location, path.parent))
        if locations:
            build_args[variable] = " ".join(locations)
    volumes = [f"{folder}:{target}:ro" for folder, target in mounts.items()]
    cert = config.get("cert")
    if cert and Path(cert).is_file():
        build_args["PIP_CERT"] = BUILD_CA
        volumes.append(f"{cert}:{BUILD_CA}:ro")
    return build_args, volumes
