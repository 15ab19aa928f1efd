# The GPU worker image: CUDA runtime, torch and transformers; one process per visible GPU.
# Not built by the tests (no Docker engine on the CI machines); kept correct by reading.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
WORKDIR /app

COPY pyproject.toml README.md ./
COPY shared ./shared
COPY api ./api
COPY cli ./cli
COPY client ./client
COPY migrations ./migrations
COPY worker ./worker
RUN pip install ".[worker]"

RUN useradd --system --uid 10001 sightline
USER sightline
# Mount or bake the checkpoint here (SIGHTLINE_MODEL_PATH), e.g. GLM-4.6V-Flash.
ENV SIGHTLINE_MODEL_PATH=/models/glm-4.6v-flash
# The launcher serves its workers' Prometheus metrics here (SIGHTLINE_WORKER_METRICS_PORT).
EXPOSE 9101
CMD ["sightline", "worker"]
