# Two commands a user needs: `make demo` (set up + run the offline study) and `make test`.
# Everything installs into the project-local virtual environment .venv/.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
# Debian packages the demo reads its data from (see README "What the demo is").
DEBIAN_DATA := dataset-fashion-mnist openclipart-png gimp-data wordnet-base tuxpaint-stamps-default
DATA_FILES := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
              /usr/share/openclipart/png /usr/share/gimp/2.0/patterns /usr/share/wordnet/index.noun \
              /usr/share/tuxpaint/stamps/animals

.PHONY: setup demo test system-data test-tools lint clean-results bench bench-quick

setup: $(VENV)/.installed system-data

# torch and torchvision first and pinned, so pip never replaces them with another build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

system-data:
	@missing=""; for f in $(DATA_FILES); do [ -e "$$f" ] || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing the demo's Debian data packages: $(DEBIAN_DATA)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_DATA) >/dev/null; \
	  else \
	    echo "Missing demo data:$$missing"; \
	    echo "The workflow downloads verified copies (rule fetch_source); or install the packages with:"; \
	    echo "  sudo apt-get install -y --no-install-recommends $(DEBIAN_DATA)"; \
	  fi; \
	fi

demo: setup
	$(BIN)/snakemake --cores $(CORES)

test: setup test-tools
	$(BIN)/python -m pytest -q

# Headless Chromium for tests/test_reports_browser.py (Debian `chromium`), installed when root; without
# root and without chromium that test says it is skipped and why.
test-tools:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing Debian chromium for the browser test of the reports"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	fi

# The checks of tests/test_lint.py (snakefmt settings: [tool.snakefmt] in pyproject.toml).
lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

# Benchmarks (README "Performance"): benchmarks/results/<host>-<date>[-quick].json and .md, 2 torch threads.
bench: setup
	$(BIN)/python benchmarks/run.py

bench-quick: setup
	$(BIN)/python benchmarks/run.py --quick

clean-results:
	rm -rf results/demo .snakemake
