# The README's commands.  `make run` serves on the embedded default; `make test` runs the
# linter (ruff, configured in pyproject.toml; a finding fails it), then the whole test suite
# (CI calls it): trial, then the JavaScript client's tests on Node's test runner;
# `make bench` runs the benchmark suite.
PYTHON ?= python3
NPM ?= npm
NODE ?= node
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test screenshots deps python-deps node-deps redis-server chromium bench

# The demo page (/demo) is on unless REALTIME_DEMO says otherwise; the demo listens on
# loopback only unless REALTIME_LISTEN says otherwise (the banner says which interfaces).
run: deps
	REALTIME_DEMO=$${REALTIME_DEMO:-true} REALTIME_LISTEN="$${REALTIME_LISTEN:-tcp:8080:interface=127.0.0.1}" $(PYTHON) -m realtime

# Node's test runner: the JavaScript client (clients/js/test/) and the pages in headless
# Chromium (tests/browser/), each file against its own gateway and pouchdb-server.
NODE_TESTS = clients/js/test/*.test.js tests/browser/*.test.js

test: deps redis-server chromium
	$(PYTHON) -m ruff check .
	$(PYTHON) -m twisted.trial tests
	PYTHON=$(PYTHON) $(NODE) --test --test-concurrency=1 $(NODE_TESTS)

# The browser tests again, writing their screenshots of /demo and /admin to docs/img/ (the
# README shows them; commit them when they change).
screenshots: deps chromium
	REALTIME_SCREENSHOTS=docs/img PYTHON=$(PYTHON) $(NODE) --test --test-concurrency=1 tests/browser/*.test.js

deps: python-deps node-deps

# A plain (non-editable) install: an editable one hides twisted/plugins from twistd.
# setuptools and wheel in the environment: the packaging test builds a wheel offline.
# build/ goes first: setuptools reuses it, so a module renamed or removed since the last
# install would ship again (a stale twisted/plugins file makes every twistd start log a
# traceback).
python-deps:
	@echo "Installing realtime and its Python dependencies (pip install .)."
	rm -rf build
	$(PYTHON) -m pip install --quiet --disable-pip-version-check 'setuptools>=68' wheel
	$(PYTHON) -m pip install --quiet --disable-pip-version-check '.[test]'
	$(PYTHON) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

node-deps: node_modules/.bin/pouchdb-server

node_modules/.bin/pouchdb-server: package.json package-lock.json
	@echo "Installing pouchdb-server (the embedded CouchDB) and the test tools with npm ci: about a minute, once."
	$(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

# The benchmark suite (benchmarks/, see benchmarks/RESULTS.md): full run < 10 min;
# `make bench BENCH_ARGS=--quick` < 2 min; BENCH_ARGS=--profile needs py-spy (pip install py-spy).
bench: deps
	$(PYTHON) -m benchmarks.run $(BENCH_ARGS)
	$(PYTHON) -m benchmarks.resume_bench $(filter --quick,$(BENCH_ARGS))
	$(PYTHON) -m benchmarks.databases $(filter --quick,$(BENCH_ARGS))

# Debian's chromium for the browser tests (playwright-core drives it; it downloads none).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

redis-server:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }
