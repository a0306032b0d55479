# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU builds: torch 2.13.0 (a CPU wheel; never pull a multi-GB CUDA build here) and spconv's CPU wheel.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= cpu,dev,modelopt

.PHONY: demo test lint bench schema clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recipe run recipes/centerpoint_int8.yaml --out runs/demo

test: $(STAMP)
	$(VENV)/bin/recipe schema --check
	$(VENV)/bin/ruff check recipe_engine tests benchmarks
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	for script in benchmarks/*.py; do $(PY) $$script || exit 1; done

schema: $(STAMP)
	$(VENV)/bin/recipe schema

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
