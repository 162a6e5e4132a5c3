# Two commands for a newcomer: `make demo` (end to end on the embedded defaults) and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp
DATA_DIR ?= data

.PHONY: install demo test test-shared typecheck clean

install: $(STAMP)

# Pinned set from requirements.lock; torchrec goes in with --no-deps because its metadata
# requires the CUDA fbgemm-gpu wheel, which cannot import on a CPU-only machine.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps torchrec==1.8.0
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: install
	VITRINE_DATA_DIR=$(DATA_DIR) $(BIN)/vitrine demo

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q tests
	$(BIN)/mypy vitrine embeddings feature_repo ranking training
	$(BIN)/ruff check vitrine embeddings feature_repo ranking training tests benchmarks

# End to end on the full real shops beside the checkout (../shared/data); .ci/run adds it when they are there.
test-shared: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -m shared_data tests/e2e

clean:
	rm -rf $(VENV) $(DATA_DIR)
