# The API image: api, migrations, webhooks, beat and flower run from it. No torch: the API
# enqueues by task name and never imports it. Built and run by `make docker-test`.
#
# BASE_IMAGE: a Debian bookworm image with Python 3.11 and its venv module. The official
# image by default; the test builds on a debootstrapped bookworm (docker/test-base.Dockerfile),
# whose python3 is Debian's: `python3 -m venv` works on both.
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
# webhooks, beat and flower run worker.ops, which imports no torch.
COPY worker ./worker
RUN /opt/venv/bin/pip install --quiet .

FROM ${BASE_IMAGE}
# No RUN step here: whatever a builder mounts for RUN steps (buildah --volume) would leave
# its mount points in this stage. The user comes from the build stage (same base).
COPY --from=build /etc/passwd /etc/group /etc/shadow /etc/gshadow /etc/
COPY --from=build --chown=10001:10001 /home/sightline /home/sightline
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8000
USER sightline
WORKDIR /home/sightline
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/healthz\", timeout=2)"]
# `sightline api` listens on $PORT.
CMD ["sightline", "api", "--host", "0.0.0.0"]
