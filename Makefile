# Each target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
PY ?= python3
VENV := .venv
BENCH_VENV := .venv-bench
STAMP := $(VENV)/.installed
SOURCES := $(shell find kernel state transports plugins -name '*.py' 2>/dev/null | sort)

.PHONY: demo test lint typecheck pytest bench clean

# Re-install (strict editable mode: a tree of links mypy and pytest both see) whenever
# pyproject.toml changes or a module is added or removed.
$(VENV)/.files: FORCE
	@mkdir -p $(VENV)
	@echo "$(SOURCES)" | cmp -s - $@ || echo "$(SOURCES)" > $@
FORCE:

$(STAMP): pyproject.toml $(VENV)/.files
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test,cli]' --config-settings editable_mode=strict
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kerna demo --docs 20000

lint: $(STAMP)
	$(VENV)/bin/ruff check kernel state transports plugins tests benchmarks
	$(VENV)/bin/ruff format --check kernel state transports plugins tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy -p kerna

pytest: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test: lint typecheck pytest

$(BENCH_VENV)/.installed: pyproject.toml benchmarks/requirements.txt $(VENV)/.files
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[cli,uvloop]' -r benchmarks/requirements.txt
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) $(BENCH_VENV) build *.egg-info
