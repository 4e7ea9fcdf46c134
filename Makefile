# The two set-up commands: `make demo` and `make test`. Both build the virtual
# environment first (only Python >= 3.11 and make are needed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO_ROOT ?= demo-repo

.PHONY: demo test venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash demo/run_demo.sh $(DEMO_ROOT)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) $(DEMO_ROOT) .pytest_cache
