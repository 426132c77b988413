# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
TENANT ?= ml1m
# Prebuilt wheels (torch-scatter/torch-sparse) live here when present; installs work without them.
SHARED_WHEELS ?= ../shared/wheels

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch: an exact pin so pip takes the local file and never the CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/tapestry demo --tenant $(TENANT)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) artifacts
