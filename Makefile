# The two commands of a fresh machine: `make demo` (set up, make a sample knowledge
# base, embed it) and `make test` (set up with test tools, lint, run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: demo test install

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(BIN)/python -m pip install -q -r requirements-test.txt
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m samples.knowledge_base --output sample-kb --rows 2000 --shards 4
	$(BIN)/python -m pipeline.run --input 'sample-kb/*.parquet' --output kb-embeddings --carry_columns title,kind --overwrite

# Two test processes (pytest-xdist), each test file in one of them, its module fixtures run once: a run
# of the job spends its first seconds in single-threaded imports, which the other process fills.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile
