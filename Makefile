# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck protos install clean pgbouncer image-check help

run: install ## set up, then start `authsvc dev` (local issuer, no Supabase needed)
	$(BIN)/authsvc dev

test: install pgbouncer lint typecheck proto-lint ## set up, lint (code, Dockerfile, protos), type-check and run the tests
	$(BIN)/pytest

# The database tests run a real PgBouncer (tests/support/pgbouncer.py). Install
# it when missing and we are root with apt-get; otherwise those tests fail and
# say how to install it. It lives in /usr/sbin, which may not be on PATH.
pgbouncer:
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || { \
		[ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer; \
	} || echo "warning: pgbouncer missing; install it with: apt-get install -y pgbouncer" >&2

# The Dockerfile's build steps without Docker: build the wheel from the files
# the image copies, install it in a fresh virtualenv outside the tree, start
# `authsvc serve` from there and probe it. Needs only Python and PyPI; it does
# not use .venv, so the dev tools cannot hide a missing runtime dependency.
image-check: ## build, install and run the wheel the way the image does
	$(PYTHON) scripts/image_check.py

# Side by side with the Node stack and a direct asyncpg pool; about 6 minutes,
# results in bench/results/latest.json. Never part of `make test`. Settings:
# BENCH_SECONDS, BENCH_RUNS, ... (see bench/run.py).
.PHONY: bench
bench: install pgbouncer ## measure authsvc against the Node baseline and direct asyncpg
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: install
	$(BIN)/mypy

PROTOS := $(shell find protos -name '*.proto')
STUBS := authsvc/v1/auth_pb2.py

install: $(STAMP) $(STUBS)

# Reinstall when the package definition or the protos change. The editable
# install runs setup.py's build step, which generates the stubs.
$(STAMP): pyproject.toml setup.py $(PROTOS)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Stubs are not committed; regenerate them if they are missing or stale.
$(STUBS): $(PROTOS) | $(STAMP)
	$(BIN)/python -c 'import setup; setup.generate_stubs()'

protos: $(STAMP) ## regenerate the Python stubs from protos/
	$(BIN)/python -c 'import setup; setup.generate_stubs()'

# buf comes from npm (@bufbuild/buf, pinned by tools/package-lock.json); the
# rules are in buf.yaml. `buf breaking` compares protos/ with the image of the
# last release, protos/released/v1.binpb; `make proto-baseline` replaces it
# when a release is cut (see protos/released/README.md).
.PHONY: proto-lint proto-baseline
BUF := tools/node_modules/.bin/buf
BUF_BASELINE := protos/released/v1.binpb
TOOLS_STAMP := tools/node_modules/.installed

$(TOOLS_STAMP): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $@

proto-lint: $(TOOLS_STAMP) ## lint protos/ and fail on changes that break the last release
	$(BUF) lint
	$(BUF) breaking --against $(BUF_BASELINE)

proto-baseline: $(TOOLS_STAMP) ## at a release: make protos/ the baseline of `buf breaking`
	$(BUF) build --exclude-source-info -o $(BUF_BASELINE)

clean:
	rm -rf $(VENV) build *.egg-info authsvc/v1

help: ## list the targets that have a description
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 24
