# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
TENANT ?= ml1m
# Prebuilt wheels (torch-scatter/torch-sparse) live here when present; installs work without them.
SHARED_WHEELS ?= ../shared/wheels
PYG_SPARSE    := torch-scatter==2.1.2 torch-sparse==0.6.18
# TorchRec's CPU stack for torch 2.13 (FBGEMM minor version must match torch's; ../shared/notes/stack-facts.md).
FBGEMM        := fbgemm-gpu-cpu==1.8.0
TORCHREC      := torchrec==1.8.0

.PHONY: install demo test clean locust gpu-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch: an exact pin so pip takes the local file and never the CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# PyG's neighbour samplers need torch-sparse (+ torch-scatter). PyPI has only their sources, whose setup.py
	# imports torch: so they come after torch, never from pyproject (pip would build them in isolation, without
	# torch). Prebuilt wheels when SHARED_WHEELS has ones that fit (seconds), else a source build (~17 min on
	# 2 cores). --no-deps: their one dependency, scipy, is in pyproject and not among the local wheels.
	if [ -d $(SHARED_WHEELS) ] && $(PY) -m pip install --quiet --no-index --no-deps \
		--find-links $(SHARED_WHEELS) $(PYG_SPARSE); then :; \
	else $(PY) -m pip install --quiet --no-build-isolation $(PYG_SPARSE); fi
	$(PY) -m pip install --quiet -e '.[dev]'
	# TorchRec last, each step after torch: torchrec declares `fbgemm-gpu` (the CUDA build, ~500 MB), which would
	# overwrite fbgemm-gpu-cpu's files and break the import. So: the CPU FBGEMM, then torchrec with --no-deps; its
	# pure-Python dependencies (tensordict, torchmetrics, pyre-extensions, tqdm) come from pyproject above.
	$(PY) -m pip install --quiet $(FBGEMM)
	$(PY) -m pip install --quiet --no-deps $(TORCHREC)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/tapestry demo --tenant $(TENANT)

test: install
	$(PY) -m pytest -q

# A bounded headless locust run (8 users, 20 s) against the running `tapestry serve` of $(TENANT); locust lives in
# its own venv (the `load` extra), never in the core install. TAPESTRY_API_KEY is sent when set.
LOCUST_VENV ?= .venv-load
locust: install
	test -x $(LOCUST_VENV)/bin/locust || { $(PYTHON) -m venv $(LOCUST_VENV) && \
		$(LOCUST_VENV)/bin/pip install --quiet 'locust>=2.20,<3'; }
	$(PY) benchmarks/locust_run.py --tenant $(TENANT) --locust $(LOCUST_VENV)/bin/locust

# The GPU check (README "GPU check"): one bounded run (8 min) on a machine with an NVIDIA GPU, summary in
# benchmarks/results/gpu-check.json ($$OUT/gpu-check.json when OUT is set). It needs no `make install`: it runs with
# this venv's Python if there is one, and itself moves to the machine's own CUDA PyTorch when this venv's torch is
# the CPU build. Installs (the `gpu` extra, missing core requirements) happen only where it finds CUDA; wheels in
# $(GPU_WHEELS) are used without network when that folder exists. No GPU: it says why and exits 0.
GPU_PYTHON     ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_WHEELS     ?= gpu-wheels
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) -m tapestry.gpucheck $(if $(wildcard $(GPU_WHEELS)),--wheels $(GPU_WHEELS)) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(LOCUST_VENV) artifacts
