# Two commands set everything up on a fresh machine:
#   make demo   screen the bundled example proteins with the bundled model, print the flagged ones
#   make test   run the whole test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: demo test install clean

install: $(VENV)/.installed

# pyproject pins torch<=2.13.0 so pip takes the local 2.13.0 CPU wheel, not a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/plmscreen screen examples/sample.fasta --out $(DEMO_OUT) --model plmscreen-mini --overwrite

# The whole suite in two steps: the fast suite (what a developer runs, kept under ~10 minutes on
# 2 cores), then the tests marked slow. pytest exits 5 when it collects no tests; make treats that
# as the failure it is.
test: install
	$(BIN)/python -m pytest -m "not slow" --durations=30
	$(BIN)/python -m pytest -m slow --durations=30

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
