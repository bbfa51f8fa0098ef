# Conventional entry points. Everything installs what it needs into .venv and the binary cache.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
REAL_NODE ?= 0

.PHONY: install model-stub test test-slow test-unit test-agents test-integration test-real lint fmt crd example cluster cluster-down testenv testenv-real images chart-package lock run bench bench-plan bench-scale clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## The whole suite: unit tests, the integration tier on a local control plane, and the real-pod
## tiers (images, e2e, isolation) on a real node beside it (all built and started on demand; the
## builds run here, before pytest's per-test timeout starts).
test: install testenv testenv-real
	$(BIN)/pytest tests $(PYTEST_ARGS)

## Only the real-pod tiers: images, e2e on the real node, isolation.
test-real: install testenv testenv-real
	$(BIN)/pytest tests/images tests/e2e tests/isolation $(PYTEST_ARGS)

## What does not fit CI's budget (marked slow): run before resolving an issue, figures in its note.
test-slow: install testenv testenv-real
	$(BIN)/pytest tests -m slow $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

## The agent worker and the code-review example against the scripted model server (127.0.0.1 only).
test-agents: install
	$(BIN)/pytest tests/agents $(PYTEST_ARGS)

test-integration: install testenv
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

## ruff, the import contracts of .importlinter (the layering of docs/architecture.md), then
## actionlint on .github/workflows (built from Go modules into the cache on first use, ~35 s).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	bash hack/actionlint.sh

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

## Build (or reuse) the control-plane binaries, helm, kubeconform, the S3 server, Kueue
## (docs/kueue.md; tests/integration/test_kueue.py starts it with hack/kueue.sh) and promtool (alert rule checks).
testenv:
	bash hack/testenv-build.sh
	@# apwa watch is tested in a real terminal: tmux (tests/integration/test_cli_live.py).
	@command -v tmux >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q tmux; } || \
	  echo "tmux could not be installed: the terminal test of apwa watch will be skipped" >&2

## What the real node needs beyond the control plane: the images (pause, worker, operator,
## CoreDNS) and the NetworkPolicy engine, built here and cached.
testenv-real: images
	bash hack/netpol.sh build >/dev/null

## The images, built here without Docker (OCI archives in ~/.cache/apwa/images; see hack/images.sh).
images:
	bash hack/images.sh build

## The chart as dist/apwa-<chart version>.tgz, with the helm of the test environment (what the
## release workflow pushes to oci://ghcr.io/apwa-dev/charts).
chart-package:
	@helm_bin=$$(bash hack/testenv-build.sh helm | tail -n 1) && mkdir -p dist && \
	  "$$helm_bin/helm" package charts/apwa --destination dist

## Refresh images/requirements.lock (every image build installs it, hash-checked) with uv, pinned
## here. uv, not pip-tools: it resolves for the images' Python (3.11, Linux) whatever interpreter
## runs it (pip-compile resolves for the one it runs in), it is one wheel from PyPI, and it writes
## the hashes of every wheel of each pinned version, so one lock serves amd64 and arm64.
UV_VERSION ?= 0.13.9
lock: install
	$(BIN)/pip install -q uv==$(UV_VERSION)
	UV=$(abspath $(BIN))/uv bash hack/images.sh lock

## Start the local control plane; the last line is an export for your shell:
##   eval "$$(make -s cluster | tail -n 1)"
## REAL_NODE=1 adds the real node (containerd, kubelet, kube-proxy, CoreDNS, kube-router; root).
cluster:
	@APWA_REAL_NODE=$(REAL_NODE) bash hack/cluster.sh up

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

## The scaling curve (issue 14): N = 1,000 and 10,000 subtasks, 3 interleaved repeats of the operator,
## raw Job creation and one Indexed Job; a CSV and bench/results/scale-latest.png. BENCH_ARGS adds
## sizes, e.g. BENCH_ARGS='--n 1000 --n 10000 --n 100000'.
bench-scale: install testenv
	$(BIN)/pip install -q -e '.[bench]'
	@eval "$$(bash hack/cluster.sh up | tail -n 1)" && $(BIN)/python bench/scale.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

.PHONY: demo

## The README demo: one command from a fresh clone. On this machine (no Docker) it starts the local
## control plane with the real node, builds the images, installs charts/apwa and runs
## examples/wordcount.yaml on real pods; where Docker and kind work, it does the same on kind
## (APWA_DEMO=kind|real forces one). The same flows are tests/e2e.
demo: install
	$(BIN)/python tests/e2e/demo.py

## A scripted OpenAI-compatible model server on 127.0.0.1:8765 (apwa.modelstub; faults: see its
## docstring), for the agent examples without a real model: MODEL_STUB_ARGS="--port 9000 --script f.json".
model-stub: install
	$(BIN)/apwa-model-stub $(MODEL_STUB_ARGS)
