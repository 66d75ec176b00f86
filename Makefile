# jobsd — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install whenever either pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml clients/python/pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: install run test test-fast lint fmt proto bench test-mongo screenshots clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	@# Both distributions, editable: the SDK first-class (jobsd-client), and the server that depends on it.
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e ./clients/python -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Serve gRPC on 127.0.0.1:50051 and REST on 127.0.0.1:8080 on the embedded store (./.jobsd/), executors on.
# A caller's JOBSD_* variables always win; the admin token is made once and kept in .jobsd/admin-token (mode 0600,
# in a 0700 directory), the worker token (JOBS:EXECUTE, for `jobsd worker` and SDK workers) in .jobsd/worker-token.
# file:// imports may read examples/ only (the demo's sample), unless JOBSD_IMPORT_FILE_ROOT
# says otherwise (set it empty to turn file imports off).
run: install
	@mkdir -p .jobsd && chmod 700 .jobsd
	@test -s .jobsd/admin-token || (umask 077 && $(BIN)/python -c "import secrets; print('jobsd_' + secrets.token_urlsafe(24))" > .jobsd/admin-token)
	@test -s .jobsd/worker-token || (umask 077 && $(BIN)/python -c "import secrets; print('jobsd_' + secrets.token_urlsafe(24))" > .jobsd/worker-token)
	@chmod 600 .jobsd/admin-token .jobsd/worker-token
	@JOBSD_IMPORT_FILE_ROOT="$${JOBSD_IMPORT_FILE_ROOT-$(CURDIR)/examples}" \
	JOBSD_ADMIN_TOKEN="$${JOBSD_ADMIN_TOKEN:-$$(cat .jobsd/admin-token)}" \
	JOBSD_WORKER_TOKEN="$${JOBSD_WORKER_TOKEN:-$$(cat .jobsd/worker-token)}" exec $(BIN)/jobsd serve --banner

# The whole suite (CI runs exactly this through .ci/run). Exit 5 (no tests collected) is reported, not hidden.
test: install
	@$(BIN)/pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

# The dashboard's screenshots in the README: taken by the browser tests (tests/browser) from the real page.
screenshots: install
	JOBSD_SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest -q -p no:cacheprovider tests/browser

# The quick loop while editing: the unit tests and the store contract on SQLite (no servers, well under 30 s).
test-fast: install
	$(BIN)/pytest -q -p no:cacheprovider tests/unit tests/contract tests/sqlite -k "not mongo"

# Rewrite the tree in the house style (what `make lint` checks): imports sorted, safe fixes, formatting.
fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

proto: install
	$(BIN)/python scripts/gen_proto.py

bench: install
	$(BIN)/python -m bench

# The peers of bench/peers.py in their own virtual environment (never jobsd's dependencies) and their servers.
PEERS := .venv-peers
peers:
	@command -v redis-server >/dev/null && command -v wrk >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server wrk; }
	@test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	@$(PEERS)/bin/python -m pip install -q --disable-pip-version-check 'celery[redis]>=5.4,<6' 'redis>=5,<7' 'flower>=2.2,<2.3'

# `make bench` plus the peers (Celery + Redis, Flower), measured in the same run with the same loads.
bench-peers: install peers
	$(BIN)/python -m bench --peers --peers-python $(PEERS)/bin/python

# The store contract, the MongoDB-specific tests and the multi-replica tests against a real server (mongod), e.g.
#   JOBSD_TEST_MONGODB_URI=mongodb://127.0.0.1:27017/?replicaSet=rs0 make test-mongo
# (`make test` runs the same tests on the MongoDB wire-protocol test server, as `mongo-wire`.)
test-mongo: install
	@test -n "$$JOBSD_TEST_MONGODB_URI" || { echo "set JOBSD_TEST_MONGODB_URI to a MongoDB replica set"; exit 2; }
	$(BIN)/pytest -q -p no:cacheprovider tests/contract tests/mongo -k mongo-real

clean:
	rm -rf $(VENV) $(PEERS) .jobsd .pytest_cache .mypy_cache .ruff_cache
