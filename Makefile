# Two commands do everything on a fresh Debian 12 machine: `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
export QT_QPA_PLATFORM := offscreen
export PYTHONUNBUFFERED := 1
DEMO_DIR ?= out/demo

.PHONY: setup test lint format demo bench readme clean package install-plugin

setup:
	@bash scripts/setup.sh

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/check_python_version.py

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: setup lint
	$(PY) -m pytest -q

demo: setup
	$(PY) -m engine.demo --out $(DEMO_DIR)

bench: setup
	$(PY) -m bench.run_all; status=$$?; $(PY) scripts/render_readme.py && exit $$status

readme: setup
	$(PY) scripts/render_readme.py

package: setup
	$(PY) scripts/package_plugin.py

install-plugin: package
	$(PY) scripts/package_plugin.py --install $(if $(PROFILE),--profile-dir $(PROFILE))

clean:
	rm -rf out build dist .pytest_cache .ruff_cache
