# Everything runs inside .venv; torch is pinned to the local CPU build (see README for GPUs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# one torch thread per test process: the tests use tiny networks, and the DDP tests run two
# processes on two cores, where more threads only contend
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

# everything but the slow tests (wheel builds, DDP processes, the GPU-check smoke, the CI workflow
# run locally, benchmarks: `@pytest.mark.slow("category")`)
test-fast: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py ppo

clean:
	rm -rf $(VENV) runs/demo
