# Two entry points on a fresh machine: `make demo` and `make test`. Each builds .venv by itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What installs from our machines' local disk; users elsewhere may install any torch>=2.1 themselves.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: install test test-slow lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check step_cache cli tests bench
	$(BIN)/python -m pytest -n 2 -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check step_cache cli tests bench
	$(BIN)/ruff format --check step_cache cli tests bench

demo: $(STAMP)
	$(BIN)/step-cache demo $(DEMO_DIR)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
