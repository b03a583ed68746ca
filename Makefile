# twotower: `make demo` and `make test` do all set-up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch first, pinned: a bare `torch` from PyPI is the CUDA build, several GB. TORCH_INDEX empty (the default)
# keeps pip's configured index and find-links, which here hold a CPU wheel on local disk; elsewhere
# `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build from PyTorch's own index.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install demo test test-slow test-fuzz test-all mutants lint format clean gpu-wheels

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[train,serve,bench,dev]"
	touch $(STAMP)

# Trains on the embedded synthetic log (or DATA=path/to/log.csv) and prints the evaluation.
demo: install
	$(PY) scripts/train.py experiment=demo $(if $(DATA),data=csv data.path=$(DATA)) paths.output_dir=runs/demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# schemathesis over every operation of a real server (tests/test_fuzz.py; settings in tests/schemathesis.toml).
test-fuzz: install
	$(PY) -m pytest -q -m fuzz tests/test_fuzz.py

test-all: install
	$(PY) -m pytest -q -m "slow or not slow or fuzz"

# Plants plausible one-line bugs in a copy of the tree, one at a time: each must fail a test CI runs.
mutants: install
	$(PY) tests/mutants.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs outputs .pytest_cache

# The wheels the GPU machine's image lacks (scripts/gpu_env.sh installs them from .whl/, offline): Hydra and its
# parsers are pure Python, at the versions installed here; antlr4's runtime ships no wheel, so one is built.
gpu-wheels: install
	mkdir -p .whl
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d .whl \
	    $$($(PY) -m pip freeze | grep -iE '^(hydra-core|omegaconf)==')
	$(PY) -m pip wheel --quiet --no-deps -w .whl $$($(PY) -m pip freeze | grep -i '^antlr4-python3-runtime==')
	ls -la .whl
