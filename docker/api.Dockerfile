# The API image: slim, no torch (the API enqueues by task name and never imports it).
# Not built by the tests (no Docker engine on the CI machines); kept correct by reading.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY shared ./shared
COPY api ./api
COPY cli ./cli
COPY client ./client
COPY migrations ./migrations
COPY worker/__init__.py ./worker/__init__.py
RUN pip install .

RUN useradd --system --uid 10001 sightline
USER sightline
ENV PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=2)"
CMD ["sh", "-c", "sightline api --host 0.0.0.0 --port ${PORT}"]
