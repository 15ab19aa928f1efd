# The GPU worker image: torch (a CUDA build, ~6 GB installed), transformers, one process per
# visible GPU. Built and run (on the CPU) by `make docker-test`.
#
# No nvidia/cuda base: torch's wheels carry their CUDA libraries (nvidia-* packages), and
# the NVIDIA container toolkit injects the driver into a container given a GPU (compose's
# device reservation). BASE_IMAGE: as in api.Dockerfile, a Debian bookworm image with
# Python 3.11; the worker runs on the Python the base ships.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Where pip looks besides its index, and the CA bundle it trusts: optional, for builders
# with a local package mirror (e.g. torch's wheels) or a TLS proxy, who mount those files
# read-only for the RUN steps (`make docker-test` does). Nothing of them reaches the image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --uid 10001 --create-home --home-dir /home/sightline sightline \
 && python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY api ./api
COPY cli ./cli
COPY client ./client
COPY migrations ./migrations
COPY worker ./worker
RUN /opt/venv/bin/pip install --quiet ".[worker]"

FROM ${BASE_IMAGE}
# No RUN step here: whatever a builder mounts for RUN steps (buildah --volume) would leave
# its mount points in this stage. The user comes from the build stage (same base).
COPY --from=build /etc/passwd /etc/group /etc/shadow /etc/gshadow /etc/
COPY --from=build --chown=10001:10001 /home/sightline /home/sightline
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SIGHTLINE_MODEL_PATH=/models/glm-4.6v-flash SIGHTLINE_WORKER_METRICS_PORT=9101
USER sightline
WORKDIR /home/sightline
# Mount or bake the checkpoint at SIGHTLINE_MODEL_PATH, e.g. GLM-4.6V-Flash. The launcher
# serves its workers' Prometheus metrics on SIGHTLINE_WORKER_METRICS_PORT.
EXPOSE 9101
# Healthy once a child has loaded the model and consumes (sightline_worker_up 1); a large
# checkpoint loads for minutes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
  CMD ["python", "-c", "import os, re, urllib.request as u; port = os.environ['SIGHTLINE_WORKER_METRICS_PORT']; text = u.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=3).read().decode(); assert re.search(r'^sightline_worker_up[{].*[}] 1[.]0$', text, re.M)"]
CMD ["sightline", "worker"]
