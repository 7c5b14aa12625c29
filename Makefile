# Two commands set everything up on a fresh machine:
#   make run    - one job from test_input.json through the real handler and engine
#   make test   - the test suite (boots the same engine once); it also sets up
#                 .venv-clients, the agent frameworks it drives over HTTP
#   make test-fast - the tests that need no engine and no vLLM (seconds)
#   make lint   - ruff (lint and format check) and mypy, as configured in pyproject.toml;
#                 make test runs it first
#   make docs   - the documentation site, docs/ -> site/ (mkdocs --strict, in .venv-docs);
#                 make test runs it, so a broken link or anchor fails the tests
#   make serve  - a local RunPod endpoint (and /openai/v1) on 127.0.0.1:8000
#   make http   - load-balancing mode: vLLM's OpenAI server and /ping on 127.0.0.1:8000
VENV   := .venv
# The interpreter .venv is made from: `PYTHON=python3.12 make run` (read before
# PYTHON names the venv's own below).
BASE_PYTHON := $(or $(PYTHON),python3)
PYTHON := $(VENV)/bin/python
# vLLM on CPU sizes its KV cache from this (GiB); 2 is plenty for the embedded model.
export VLLM_CPU_KVCACHE_SPACE ?= 2

.PHONY: setup clients docs model run test test-fast lint serve http bench clean

setup:
	@PYTHON="$(BASE_PYTHON)" bash builder/setup_venv.sh

# The agent frameworks tests/test_frameworks.py drives, in their own venv.
clients:
	@PYTHON="$(BASE_PYTHON)" bash builder/setup_tool_venv.sh .venv-clients tests/clients/requirements.txt

# The documentation site, from its own venv; strict: a warning (a broken link or
# anchor, a page missing from nav) fails the build. Offline: no fetching plugin.
docs:
	@PYTHON="$(BASE_PYTHON)" bash builder/setup_tool_venv.sh .venv-docs docs/requirements.txt
	NO_MKDOCS_2_WARNING=1 .venv-docs/bin/mkdocs build --strict

model: setup
	@$(PYTHON) -m handler prepare

run: model
	$(PYTHON) -m handler run $(if $(INPUT),--input $(INPUT))

serve: model
	$(PYTHON) -m handler serve $(if $(PORT),--port $(PORT))

http: model
	$(PYTHON) -m handler http $(if $(PORT),--port $(PORT))

test: model lint clients docs
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# No engine, no vLLM import (conftest's --fast fails the run if a test imports it).
FAST_TESTS := tests/test_config.py tests/test_caches.py tests/test_bake.py tests/test_plan.py tests/test_setup.py tests/test_versions.py
test-fast: setup
	$(PYTHON) -m pytest --fast -q $(FAST_TESTS) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: model
	$(PYTHON) bench/overhead.py

clean:
	rm -rf $(VENV) .venv-clients .venv-docs site
