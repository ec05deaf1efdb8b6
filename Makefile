# make lab        set up .venv (first use, or when pyproject.toml changed) and open JupyterLab
# make test       set up .venv and run every test: ruff, pytest, nbval on every notebook
# make notebooks  re-run every notebook in place, saving its outputs (after a labserver change)
#
# LAB_PORT=8888 make lab    the port JupyterLab listens on (default 8888)
# LAB_ARGS="--no-browser"   any other option for `jupyter lab`

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LAB_PORT ?= 8888
LAB_ARGS ?=
# Jupyter refuses to run as root unless told; containers and CI machines often are root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test notebooks lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[lab,test]'
	touch $@

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(LAB_PORT) $(ROOT_FLAG) $(LAB_ARGS)

test: $(STAMP)
	$(BIN)/ruff check labserver tests benchmarks
	$(BIN)/python -m pytest

notebooks: $(STAMP)
	cd notebooks && for nb in [0-9]*.ipynb; do \
		echo "running $$nb"; \
		../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=120 "$$nb" || exit 1; \
	done

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python "$$b" || exit 1; done

clean:
	rm -rf $(VENV)
