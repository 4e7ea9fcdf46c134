# The two set-up commands: `make demo` and `make test`. Both build the virtual
# environment first (only Python >= 3.11 and make are needed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO_ROOT ?= demo-repo

.PHONY: demo test venv clean postgres browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,postgres]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash demo/run_demo.sh $(DEMO_ROOT)

test: $(VENV)/.installed postgres browser
	$(PY) -m pytest -q -n 2 --dist loadfile

# PostgreSQL for the registry tests (tests/pg_server.py starts a private server on
# 127.0.0.1): Debian's server binaries and the psycopg2 driver. apt needs root (or
# passwordless sudo); without them the PostgreSQL tests FAIL and say what to install.
postgres: $(VENV)/.installed
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	elif sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "make: not root: cannot install PostgreSQL (apt-get install -y postgresql); its tests will fail"; fi
	@$(PY) -c "import psycopg2" 2>/dev/null || $(PY) -m pip install -q psycopg2-binary

# Headless Chromium and its driver (Debian's packages) for the HTML-report test.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	elif sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "make: not root: cannot install chromium chromium-driver; the report test will fail"; fi

clean:
	rm -rf $(VENV) $(DEMO_ROOT) .pytest_cache
