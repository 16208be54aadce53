# The README's two commands: `make demo` (main job) and `make test` (the tests CI runs).
SHELL := /bin/bash
PY := .venv/bin/python
PORT ?= 8000
DIST ?= dist

.PHONY: setup demo test test-quick coverage lint qt6-check package serve-demo clean

setup:
	bash scripts/setup

demo: setup
	bash scripts/demo

test: setup
	@t0=$$(date +%s); .venv/bin/ruff check . && bash scripts/qt6-check && \
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest --durations=15; rc=$$?; \
	echo "tests: $$(( $$(date +%s) - t0 )) s"; exit $$rc

coverage: setup
	QT_QPA_PLATFORM=offscreen $(PY) -m coverage run -m pytest; rc=$$?; $(PY) -m coverage report; exit $$rc

test-quick:
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m "not vllm"

lint:
	.venv/bin/ruff check .

qt6-check:
	bash scripts/qt6-check

package:
	$(PY) scripts/package.py $(DIST)

serve-demo:
	PORT=$(PORT) bash scripts/serve-demo

clean:
	rm -rf build dist .pytest_cache
