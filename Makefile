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
# processes on two cores, where more threads only contend.
# The tests that are not slow run in TEST_WORKERS pytest-xdist processes (auto: one per CPU core),
# each test file's tests in one of them, so that a module's shared fixtures are made once; the slow
# ones (`@pytest.mark.slow("category")`: wheel builds, DDP processes, the GPU-check smoke,
# benchmarks) then run in one process, so that the DDP runs get the cores to themselves.
TEST_WORKERS ?= auto
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

# everything: the fast tier in parallel, then the slow tests; fails when either fails
test: $(STAMP)
	status=0; \
	$(PYTEST) -m "not slow" -n $(TEST_WORKERS) --dist loadfile || status=$$?; \
	$(PYTEST) -m slow || status=$$?; \
	exit $$status

# everything but the slow tests
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(BIN)/python scripts/benchmark.py ppo

clean:
	rm -rf $(VENV) runs/demo
