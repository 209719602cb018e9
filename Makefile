# One-command workflows. Everything installs itself into .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install lock test test-fast demo lint bench clean

install: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml tools/install_learn2learn.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	grep -v '^learn2learn==' requirements/lock.txt > $(VENV)/lock-pip.txt
	$(PY) -m pip install -q --no-deps -r $(VENV)/lock-pip.txt
	bash tools/install_learn2learn.sh $(PY)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(PY) -c "import torch, torchaudio, lightning, hydra, h5py; from dsaml.meta.l2l import learn2learn; learn2learn(); print('dsaml installed: torch', torch.__version__, 'torchaudio', torchaudio.__version__)"
	touch $(STAMP)

# Refresh the lock on purpose (resolves pyproject.toml anew in a throw-away venv); then `make install`.
lock:
	bash tools/lock.sh

test: $(STAMP)
	$(PY) -m pytest -q --durations=15 tests

# Everything but the end-to-end tests marked slow (`pytestmark = pytest.mark.slow` in their modules).
test-fast: $(STAMP)
	$(PY) -m pytest -q --durations=15 -m "not slow" tests

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
