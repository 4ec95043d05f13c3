# Two entry points (see README): `make demo` and `make test`. Both create/reuse .venv and install what they need.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv demo test test-fast docs openapi wheel-test lint format test-slow test-fuzz test-chaos model clean browser scan-venv kserve-venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,docs,int8]"
	@! $(BIN)/python -m pip show torch >/dev/null 2>&1 || { echo "torch is installed in $(VENV): remove it (TF + torch segfault)"; exit 1; }
	rm -f $(VENV)/.installed-*; touch $(STAMP)

demo: venv
	$(BIN)/bm-ray demo

# ruff, then the layers contract (.importlinter): an upward import between bm_ray's layers fails lint.
lint: venv
	$(BIN)/ruff check bm_ray tests
	$(BIN)/ruff format --check bm_ray tests
	$(BIN)/lint-imports --no-cache

format: venv
	$(BIN)/ruff check --fix bm_ray tests
	$(BIN)/ruff format bm_ray tests

# $(call tool-venv,DIR,PACKAGE==VERSION,STAMP): a virtualenv of its own for a test tool whose pins
# conflict with ours; STAMP (named after the version) marks it installed.
define tool-venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q $(2)
	rm -f $(1)/.installed-*; touch $(3)
endef

# checkov (the Helm chart's policy scan, tests/integration/test_helm_policy.py) pins packages that conflict with ours: own venv.
SCAN_VENV ?= .venv-scan
CHECKOV_VERSION := 3.3.30
SCAN_STAMP := $(SCAN_VENV)/.installed-checkov-$(CHECKOV_VERSION)

scan-venv: $(SCAN_STAMP)

$(SCAN_STAMP):
	$(call tool-venv,$(SCAN_VENV),checkov==$(CHECKOV_VERSION),$(SCAN_STAMP))

# kserve's InferenceRESTClient (tests/integration/test_protocols.py drives the KServe V1 and V2 protocols
# with it) pins packages that conflict with ours: own venv, driven from the test through a subprocess.
KSERVE_VENV ?= .venv-kserve
KSERVE_VERSION := 0.21.0
KSERVE_STAMP := $(KSERVE_VENV)/.installed-kserve-$(KSERVE_VERSION)

kserve-venv: $(KSERVE_STAMP)

$(KSERVE_STAMP):
	$(call tool-venv,$(KSERVE_VENV),kserve==$(KSERVE_VERSION),$(KSERVE_STAMP))

# pytest-xdist workers: a test mostly waits on Ray, Serve or a subprocess, so on 2 cores one pytest
# process leaves about half the CPU idle. Each worker has its own embedded Ray; tests/conftest.py's
# scheduler keeps each module (and the modules sharing a session training) on one worker, that longest
# unit first, the rest in collection order (the short unit tests last, which evens out the ends).
PYTEST_WORKERS ?= 2
PYTEST_XDIST = -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: lint docs browser scan-venv kserve-venv
	$(BIN)/python -m pytest -q $(PYTEST_XDIST)

# The docs site (docs/, Sphinx + MyST): warnings are errors and nitpicky mode fails on a broken internal
# reference, so a dead link fails the build (no network needed).
docs: venv
	$(BIN)/sphinx-build -W --keep-going -n -q -b html docs docs/_build/html

# Rewrite docs/openapi.json from the endpoint's FastAPI app (tests/unit/test_docs.py fails while it is stale).
openapi: venv
	$(BIN)/python docs/_ext/openapi_gen.py

# A user's install: the built wheel in a fresh virtualenv, then `bm-ray demo` outside the checkout.
WHEEL_TMP ?= /tmp/bm-ray-wheel-test
wheel-test: venv
	rm -rf $(WHEEL_TMP) dist && mkdir -p $(WHEEL_TMP)
	$(BIN)/python -m pip wheel -q --no-deps -w dist .
	$(PYTHON) -m venv $(WHEEL_TMP)/venv
	$(WHEEL_TMP)/venv/bin/python -m pip install -q -c constraints.txt dist/bm_ray-*.whl
	cd $(WHEEL_TMP) && $(WHEEL_TMP)/venv/bin/bm-ray demo --workdir $(WHEEL_TMP)/demo --port 8765

# The fast loop: unit tests only (no Ray, Serve, S3 server or browser), under 3 minutes on 2 cores.
test-fast: venv
	$(BIN)/python -m pytest -q tests/unit -m "not integration"

# Headless Chromium for the browser tests (tests/browser.py drives it through playwright's Python API).
# Installed with apt when missing; elsewhere install Chromium or Chrome and set BM_RAY_CHROMIUM=/path/to/it.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "$$BM_RAY_CHROMIUM" ] || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); $$sudo apt-get update -q && $$sudo apt-get install -y -q chromium; \
	  else echo "no Chromium and no apt-get: install Chromium or Chrome and set BM_RAY_CHROMIUM=/path/to/it"; exit 1; fi; }

test-slow: venv
	BM_RAY_SLOW=1 $(BIN)/python -m pytest -q -m "slow or realdata"

# Node-loss chaos tests (tests/integration/test_node_loss.py): raylets SIGKILLed on a local multi-node cluster
# during classify (>= 100k rows), training and Serve load; tens of minutes on 2 cores.
test-chaos: venv
	BM_RAY_CHAOS=1 $(BIN)/python -m pytest -q -m chaos

# The property-based tests (marker `fuzz`) with many more examples than `make test` runs (tests/fuzzing.py):
# FUZZ_EXAMPLES=20000 make test-fuzz for a longer hunt. A failure prints the example to keep as an @example.
FUZZ_EXAMPLES ?= 5000
test-fuzz: venv
	BM_RAY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -m fuzz tests/unit

clean:
	rm -rf $(VENV) $(SCAN_VENV) $(KSERVE_VENV) .pytest_cache .ruff_cache
