# Set-up and main commands. Everything installs into .venv; nothing needs to be installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch 2.13.0 is served as a local CPU build on these machines; pinning it first keeps pip
# from pulling a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: venv demo test test-slow ci smoke clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The main job: the math + code experiment with the cpu preset on the embedded SmolLM2-135M.
demo: $(STAMP)
	$(BIN)/lorasoups run configs/math_code.yaml --preset cpu --out runs/math_code_cpu

# The fast test suite (tiny random Llama; about 3 minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest

# Slower tests on the embedded SmolLM2-135M (every shipped config's smoke preset end to end).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# What CI runs (.ci/run): the fast suite, then the slow tests (smoke preset of all four configs on SmolLM2-135M).
ci: test
	$(BIN)/python -m pytest -m slow

smoke: $(STAMP)
	$(BIN)/lorasoups run configs/math_code.yaml --preset smoke --out runs/math_code_smoke

clean:
	rm -rf $(VENV) runs
