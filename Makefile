# One-command workflows. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml tools/install_learn2learn.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools "cython>=3"
	$(PY) -m pip install -q "torch==2.11.*" "torchaudio==2.11.*" "torchvision==0.26.*"
	bash tools/install_learn2learn.sh $(PY)
	$(PY) -m pip install -q -e ".[dev,slurm,clap]"
	$(PY) -c "import torch, torchaudio, lightning, hydra, h5py, dsaml.meta; dsaml.meta.learn2learn(); print('dsaml installed: torch', torch.__version__, 'torchaudio', torchaudio.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(VENV)/bin/dsaml-demo

lint: $(STAMP)
	$(PY) -m ruff check src tests experiments

bench: $(STAMP)
	for script in experiments/benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

# Every GPU check in one command (experiments/gpu_check.py): CUDA tests, DMER/PDMER on trainer=gpu and ddp,
# the benchmarks in float32 and bf16 -> gpu_check.md in $OUT (or outputs/gpu_check/); without CUDA, a dry
# run at tiny sizes on the CPU. On a machine with its own torch and no venv: make gpu-check STAMP= PY=python3
.PHONY: gpu-check
gpu-check: $(STAMP)
	$(PY) experiments/gpu_check.py
