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
	$(BIN)/pip install --quiet -e '.[dev,ray]'
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

# nnU-Net v2 for the side-by-side benchmarks; torch stays pinned (left free, pip upgrades it to a CUDA build).
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]' torch==2.13.0

clean:
	rm -rf $(VENV) build *.egg-info
