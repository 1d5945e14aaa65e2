# The two commands of the README: `make demo` and `make test`. Each builds .venv by itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
MINUTES ?= 6

.PHONY: demo test test-fast lint-imports venv clean bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: a bare requirement could pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,openvino,dicom,ray]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/seg3d demo $(if $(DATA),--data $(DATA)) --minutes $(MINUTES)

# The layer contract (pyproject.toml [tool.importlinter]) first: a new upward import or cycle fails fast.
lint-imports: $(STAMP)
	$(BIN)/lint-imports

test: lint-imports
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (demo, DDP, torch.compile, long trainings): under 90 s on 2 cores.
test-fast: lint-imports
	$(BIN)/python -m pytest -q -m "not slow"

# nnU-Net v2 gets its own environment: nnunetv2 pulls torchvision 0.29, which requires torch>=2.14 and would
# replace seg3d's pinned CPU torch 2.13 with a multi-GB CUDA build (seen 2026-11-30). Benchmarks take
# --nnunet-bin .venv-nnunet/bin.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,openvino,dicom]' psutil
	$(PY) -m venv .venv-nnunet
	.venv-nnunet/bin/pip install --quiet 'nnunetv2==2.8.1' psutil

clean:
	rm -rf $(VENV) .venv-nnunet build *.egg-info
