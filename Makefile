# Two entry points: `make demo` (set up, then read sample images with the shipped model)
# and `make test` (set up, then run the test suite). Both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned to the releases that lie on this machine's disk; the package itself accepts older ones.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup test demo clean

$(BIN)/textrec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/textrec

# Two worker processes, each test file in one of them (its module fixtures are built once); TEST_WORKERS=0 runs
# the suite in this process. docs/testing.md has the timings.
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

demo: setup
	$(BIN)/textrec samples data/samples
	$(BIN)/textrec predict data/samples

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
