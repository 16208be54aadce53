# The README's two commands: `make demo` (main job) and `make test` (the tests CI runs).
SHELL := /bin/bash
PY := .venv/bin/python
PORT ?= 8000
DIST ?= dist

.PHONY: setup demo test test-quick coverage test-qgis-versions lint qt6-check package serve-demo clean

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

# The QGIS-facing tests on QGIS 3.40 LTR (Debian trixie) and the newest QGIS (Debian sid), each in a cached
# debootstrap chroot (QGIS_CHROOTS, default ~/.local/share/floodmapper/chroots); QGIS_SUITES="host trixie sid"
# adds this machine's QGIS as a row. As root. See scripts/test-qgis-versions.
QGIS_SUITES ?= trixie sid
test-qgis-versions: setup
	bash scripts/test-qgis-versions $(QGIS_SUITES)

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
