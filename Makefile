# The README's commands.  `make run` serves on the embedded default; `make test` runs the
# linter (ruff, configured in pyproject.toml; a finding fails it), then the whole test suite
# (CI calls it): trial, then the JavaScript client's tests on Node's test runner;
# `make bench` runs the benchmark suite.
PYTHON ?= python3
NPM ?= npm
NODE ?= node
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps python-deps node-deps redis-server bench

# The demo page (/demo) is on unless REALTIME_DEMO says otherwise.
run: deps
	REALTIME_DEMO=$${REALTIME_DEMO:-true} $(PYTHON) -m realtime

test: deps redis-server
	$(PYTHON) -m ruff check .
	$(PYTHON) -m twisted.trial tests
	PYTHON=$(PYTHON) $(NODE) --test --test-concurrency=1 clients/js/test/*.test.js

deps: python-deps node-deps

# A plain (non-editable) install: an editable one hides twisted/plugins from twistd.
# setuptools and wheel in the environment: the packaging test builds a wheel offline.
python-deps:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check 'setuptools>=68' wheel
	$(PYTHON) -m pip install --quiet --disable-pip-version-check '.[test]'
	$(PYTHON) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

node-deps: node_modules/.bin/pouchdb-server

node_modules/.bin/pouchdb-server: package.json package-lock.json
	$(NPM) ci --no-audit --no-fund --loglevel=error
	touch $@

# The benchmark suite (benchmarks/, see benchmarks/RESULTS.md): full run < 10 min;
# `make bench BENCH_ARGS=--quick` < 2 min; BENCH_ARGS=--profile needs py-spy (pip install py-spy).
bench: deps
	$(PYTHON) -m benchmarks.run $(BENCH_ARGS)

redis-server:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }
