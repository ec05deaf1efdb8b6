# make lab        set up .venv (first use, or when pyproject.toml changed) and open JupyterLab
# make test       set up .venv and run every test: ruff, pytest, nbval on every notebook, and
#                 the transports' tests again with the fast tier off (tests/fast_off)
# make notebooks  re-run every notebook in place, saving its outputs and its screenshots
#                 (LABSERVER_SCREENSHOTS=write; any other run leaves notebooks/screenshots/ alone)
# make lab-check  open every notebook in JupyterLab in headless Chromium, as a learner does:
#                 every Mermaid diagram drawn, then Run All with the IFrames live (slow: minutes;
#                 LAB_CHECK_ARGS="--only 05 --no-run")
# make claims     run every notebook 5 times (the last 2 with both cores busy) and write the
#                 ledger of their claims to claims/ (CLAIMS_ARGS="--only 01_polling --runs 5")
# make bench      labserver side by side with the book's Node.js stack: prints a markdown table
#                 (BENCH_ARGS=--quick: one round in under a minute; --readme: into benchmarks/README.md)
# make conformance  the Autobahn|Testsuite fuzzing client against labserver's WebSocket: its
#                 table per case group (CASES=1-7,10: the subset CI runs); needs Python 2.7
# make ko         the Korean edition: update i18n/ko/*.po from the English notebooks, build
#                 notebooks/ko/*.ipynb for every complete catalog, list the stale cells
#
# LAB_PORT=8888 make lab    the port JupyterLab listens on (default 8888)
# make lab LAB_LANG=ko      JupyterLab in Korean, opened on notebooks/ko (README.ko.md);
#                           the default when LANG is Korean (ko_KR.UTF-8)
# LAB_ARGS="--no-browser"   any other option for `jupyter lab`

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LAB_PORT ?= 8888
LAB_ARGS ?=
LAB_LANG ?= $(if $(filter ko%,$(LANG)),ko)
# Lab's locale is a setting: the Korean settings are copied (once, never over a learner's own
# changes) into a folder of the venv that JUPYTERLAB_SETTINGS_DIR points at.
LAB_SETTINGS := $(VENV)/lab-settings-ko
# Jupyter refuses to run as root unless told; containers and CI machines often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test notebooks lab-check claims lint bench bench-lessons clean conformance conformance-env ko

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[lab,test]'
	touch $@

lab: $(STAMP)
ifeq ($(LAB_LANG),ko)
	mkdir -p $(LAB_SETTINGS) && cp -R -n i18n/lab-settings-ko/. $(LAB_SETTINGS)/
	JUPYTERLAB_SETTINGS_DIR=$(LAB_SETTINGS) $(BIN)/jupyter lab --notebook-dir=notebooks \
		--LabApp.default_url=/lab/tree/ko --port=$(LAB_PORT) $(ROOT_FLAG) $(LAB_ARGS)
else
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(LAB_PORT) $(ROOT_FLAG) $(LAB_ARGS)
endif

# One pytest session, two workers; each test file and each notebook stays on one of them.
# tests/fast_off/ runs the transports' test files and four lessons again with labserver's fast
# tier off (LABSERVER_FAST=0: every transport on the libraries' public APIs alone, as when its
# canary finds a private part missing); see FAST_OFF_DIR in tests/conftest.py.
test: $(STAMP)
	$(BIN)/ruff check labserver tests benchmarks claims i18n
	$(BIN)/python -m pytest -n 2 --dist loadfile

notebooks: $(STAMP)
	cd notebooks && for nb in [0-9]*.ipynb; do \
		echo "running $$nb"; \
		LABSERVER_SCREENSHOTS=write ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=120 "$$nb" || exit 1; \
	done

ko: $(STAMP)
	$(BIN)/python i18n/ko.py

LAB_CHECK_ARGS ?=
lab-check: $(STAMP)
	$(BIN)/python -m labserver.labdriver $(LAB_CHECK_ARGS)

CLAIMS_ARGS ?=
claims: $(STAMP)
	$(BIN)/python claims/run.py $(CLAIMS_ARGS)

BENCH_ARGS ?=
NODE_MODULES := benchmarks/node/node_modules/.package-lock.json

$(NODE_MODULES): benchmarks/node/package.json benchmarks/node/package-lock.json
	cd benchmarks/node && npm ci --no-audit --no-fund
	touch $@

bench: $(STAMP) $(NODE_MODULES)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# The lessons' own small benchmarks (polling, SSE fan-out), each printing its tables.
bench-lessons: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python "$$b" || exit 1; done

# Autobahn|Testsuite is Python 2 code: it gets a virtualenv of its own, made with the last
# virtualenv that still makes 2.7 environments (20.21), from python2.7 on PATH or pyenv's.
PYTHON27 ?= $(shell for p in $(wildcard $(HOME)/.pyenv/versions/2.7*/bin/python2.7) python2.7; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null && { command -v $$p; break; }; done)
AUTOBAHN := conformance/.venv2
CASES ?= *

$(AUTOBAHN)/.installed: conformance/requirements-py2.txt | $(STAMP)
	@test -n "$(PYTHON27)" || { echo "make conformance needs Python 2.7 (python2.7 on PATH, or pyenv's ~/.pyenv/versions/2.7.18): see README.md"; exit 1; }
	rm -rf $(AUTOBAHN) conformance/.virtualenv
	$(BIN)/python -m pip install --quiet --target conformance/.virtualenv 'virtualenv==20.21.1'
	PYTHONPATH=conformance/.virtualenv $(BIN)/python -m virtualenv --quiet -p $(PYTHON27) $(AUTOBAHN)
	$(AUTOBAHN)/bin/python -m pip install --quiet --disable-pip-version-check -r conformance/requirements-py2.txt
	touch $@

conformance-env: $(STAMP) $(AUTOBAHN)/.installed

conformance: conformance-env
	$(BIN)/python conformance/run.py --cases '$(CASES)'

clean:
	rm -rf $(VENV)
