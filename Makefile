# Two entry points for a fresh clone: `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# --isolated: ignore this machine's pip config (a local CPU-only torch wheel); take PyPI's default
# CUDA-enabled torch, pinned in constraints.txt, so torchvision/open_clip/CUDA builds all work.
PIP    := $(PY) -m pip install --isolated --disable-pip-version-check -q -c constraints.txt
STAMP  := $(VENV)/.installed
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/build/inductor-cache

.PHONY: setup demo reproduce test test-gpu bench constraints clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements-dev.txt torch torchvision triton
	# CUTLASS/CuTe C++ headers for csrc/cuda/hopper_*.cu (setup.py finds them); its Python tools are unused: no deps
	$(PIP) --no-deps nvidia-cutlass
	$(PIP) --no-build-isolation --no-deps -e .
	$(PY) -m clipkern.info
	touch $(STAMP)

# Main job (training/demo.py): generate the synthetic attribute world, train a tiny CLIP with the fused
# CLIP loss, finetune it with PC-CLIP, print the before/after evaluations, then the loss benchmark
# beside open_clip. Without a GPU the benchmark also runs the fused kernels interpreted (times meaningless).
demo: $(STAMP)
	if $(PY) -c "import torch, sys; sys.exit(torch.cuda.is_available())"; then \
		TRITON_INTERPRET=1 $(PY) -m training.demo; else $(PY) -m training.demo; fi

# Every recipe over 5 seeds from one base checkpoint, with 95 % intervals; writes training/RESULTS.md
# (22 min measured on a 2-core CPU machine, --threads 1 per run, one run at a time).
reproduce: $(STAMP)
	$(PY) -m training.reproduce

# CPU test suite; the Triton kernels run under the interpreter. GPU lane: `make test-gpu`.
test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -m "not gpu" -q --timeout=900 -p no:cacheprovider --benchmark-disable

test-gpu: $(STAMP)
	$(PY) -m pytest -m gpu -q

bench: $(STAMP)
	$(PY) -m benchmarks.run --out benchmarks/results

constraints: $(STAMP)
	{ head -n 2 constraints.txt; $(PY) -m pip freeze --isolated --all | grep -v -E '^(-e |clipkern|pip==|# Editable)'; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
