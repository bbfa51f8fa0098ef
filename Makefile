# Conventional entry points. Everything installs what it needs into .venv and the binary cache.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install test test-unit test-integration lint fmt crd example cluster cluster-down testenv run bench bench-plan clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## The whole suite: unit tests, then the integration tier on a local control plane (built and
## started on demand by the test fixture).
test: install testenv
	$(BIN)/pytest tests $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install testenv
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

## ruff, then the import contracts of .importlinter (the layering of docs/architecture.md).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Regenerate the CRD from the API models, and its copy in the chart (tests fail when they drift).
crd: install
	$(BIN)/apwa crd > crds/apwa.dev_parallelworkloads.yaml
	cp crds/apwa.dev_parallelworkloads.yaml charts/apwa/crds/apwa.dev_parallelworkloads.yaml

## The real-work example, run locally: counts this repository's files, lines and words.
example: install
	$(BIN)/apwa run --local examples/wordcount.yaml

## Build (or reuse) the control-plane binaries, helm and kubeconform.
testenv:
	bash hack/testenv-build.sh

## Start the local control plane; the last line is an export for your shell:
##   eval "$$(make -s cluster | tail -n 1)"
cluster:
	@bash hack/cluster.sh up

cluster-down:
	@bash hack/cluster.sh down

## Run the operator against the local control plane (installs the CRD first).
run: install
	@eval "$$(bash hack/cluster.sh up | tail -n 1)" && kubectl apply -f crds/ && $(BIN)/apwa operator

bench-plan: install
	$(BIN)/python bench/plan_render.py

bench: install testenv
	$(BIN)/python bench/plan_render.py
	@eval "$$(bash hack/cluster.sh up | tail -n 1)" && $(BIN)/python bench/operator_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: demo

## The README demo on kind (needs Docker with a running daemon, kind and kubectl): creates the kind
## cluster of kind-config.yaml, builds and loads both images, installs charts/apwa, runs
## examples/wordcount.yaml on real pods and prints its result. The same flow is tests/e2e.
demo: install
	$(BIN)/python tests/e2e/test_kind.py
