# Two commands do everything on a fresh Debian 12 machine:
#   make run    set up, then start the server (embedded redis-server unless CHARGING_REDIS_URL is set,
#               embedded PostgreSQL unless CHARGING_DATABASE_URL is set)
#   make test   set up, then ruff, mypy and pytest against a real redis-server and PostgreSQL
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PROTOS := $(wildcard protos/charging/v1/*.proto)
GEN    := charging/v1/__init__.py

.PHONY: all setup run cluster test door lint bench chaos loadtest redis-server postgresql h2load prometheus proto clean browser console-htmx tshark erlang-diameter faketime

all: setup

setup: $(STAMP) $(GEN)

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); $(MAKE) --no-print-directory apt PKG=python3-venv && $(PYTHON) -m venv $(VENV); }

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

# Python code and type stubs generated from protos/ (not committed).
$(GEN): $(PROTOS) $(STAMP)
	rm -rf charging/v1
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=. --grpc_python_out=. --mypy_out=quiet:. --mypy_grpc_out=quiet:. $(PROTOS)
	touch $@

proto: $(GEN)

# Install redis-server from Debian's packages when it is missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PKG=redis-server

# Install PostgreSQL from Debian's packages when it is missing: its server binaries are not
# on the PATH there but in /usr/lib/postgresql/<major>/bin (CHARGING_POSTGRES_BIN_DIR
# names another place). The package also creates the unprivileged postgres user that the
# embedded server and the tests run PostgreSQL as when they run as root.
postgresql:
	@if [ -n "$$CHARGING_POSTGRES_BIN_DIR" ] && [ -x "$$CHARGING_POSTGRES_BIN_DIR/initdb" ]; then :; \
	elif ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && { [ "$$(id -u)" != 0 ] || id postgres >/dev/null 2>&1; }; then :; \
	else $(MAKE) --no-print-directory apt PKG=postgresql; fi

# The console's browser tests (tests/test_console_browser.py): Debian's headless Chromium
# and its driver, and axe-core from npm in a cache directory (AXE below).
AXE := var/cache/axe-core/axe.min.js
browser: $(AXE)
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } \
		|| $(MAKE) --no-print-directory apt PKG="chromium chromium-driver"

$(AXE):
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PKG=npm
	mkdir -p var/cache/axe-core
	cd var/cache/axe-core && npm pack --silent axe-core@4 >/dev/null && tar xzf axe-core-*.tgz \
		&& cp package/axe.min.js axe.min.js && rm -rf package axe-core-*.tgz

# Refresh the console's vendored htmx (committed with its licence header).
console-htmx:
	@command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PKG=npm
	rm -rf var/cache/htmx && mkdir -p var/cache/htmx
	cd var/cache/htmx && npm pack --silent htmx.org@2 >/dev/null && tar xzf htmx.org-*.tgz
	{ printf '/* htmx %s (npm htmx.org), https://htmx.org — Zero-Clause BSD licence:\n' "$$(node -p 'require("./var/cache/htmx/package/package.json").version')"; \
	  printf ' * Permission to use, copy, modify, and/or distribute this software for any purpose with or\n'; \
	  printf ' * without fee is hereby granted. THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL\n'; \
	  printf ' * WARRANTIES. Refresh: make console-htmx. */\n'; cat var/cache/htmx/package/dist/htmx.min.js; } > console/static/htmx.min.js
# tshark decodes the Diameter capture of tests/test_diameter_capture.py.
tshark:
	@command -v tshark >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PKG=tshark

test: tshark

# OTP's diameter application (escript runs it) as an independent Diameter peer in
# tests/test_diameter_erlang.py.
erlang-diameter:
	@{ command -v escript >/dev/null 2>&1 && [ -n "$$(ls -d /usr/lib/erlang/lib/diameter-* 2>/dev/null)" ]; } \
		|| $(MAKE) --no-print-directory apt PKG=erlang-diameter

test: erlang-diameter
# libfaketime moves the chaos suite's server clock (chaos/clock.py, tests/test_chaos.py).
faketime:
	@ls /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1 2>/dev/null | grep -q . \
		|| $(MAKE) --no-print-directory apt PKG=libfaketime

test: faketime

# The compiled gRPC door (door/, README "The compiled gRPC door"): gRPC's C++ library and
# a compiler from Debian's packages, one file, no generated code.
DOOR := var/build/charging-grpc-door
door: $(DOOR)

$(DOOR): door/grpc_door.cc
	@{ command -v g++ >/dev/null 2>&1 && pkg-config --exists grpc++ 2>/dev/null; } \
		|| $(MAKE) --no-print-directory apt PKG="g++ pkg-config libgrpc++-dev"
	mkdir -p $(dir $@)
	g++ -O2 -std=c++17 -Wall -Wextra -Werror -o $@ $< $$(pkg-config --cflags --libs grpc++)

test: door

# Prometheus and promtool for the monitoring tests (ops/prometheus). The tests start their
# own prometheus on a free port with a temporary configuration: the package's service is
# not used (and may stay stopped).
prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PKG=prometheus

h2load:
	@command -v h2load >/dev/null 2>&1 || $(MAKE) --no-print-directory apt PKG=nghttp2-client

apt:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(PKG) from Debian's packages"; \
		apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(PKG) >/dev/null; \
	else \
		echo "error: $(PKG) is missing. Install it (as root: apt-get install $(PKG))." >&2; exit 1; \
	fi

# As root, the embedded PostgreSQL runs as the user postgres. When that user cannot enter
# this checkout (a home directory is usually 0700), its data goes under /var/lib/charging
# instead: one directory per checkout, kept across restarts.
# make run serves Diameter Gy/Ro on 127.0.0.1:3868 unless CHARGING_DIAMETER_ADDRESS says
# otherwise (set and empty: no Diameter).
run: export CHARGING_DIAMETER_ADDRESS ?= 127.0.0.1:3868
run: setup
	@[ -n "$$CHARGING_REDIS_URL" ] || $(MAKE) --no-print-directory redis-server
	@[ -n "$$CHARGING_DATABASE_URL" ] || $(MAKE) --no-print-directory postgresql
	@if [ -z "$$CHARGING_DATABASE_URL$$CHARGING_DATABASE_DIR" ] && [ "$$(id -u)" = 0 ] \
		&& ! runuser -u postgres -- test -x "$(CURDIR)" 2>/dev/null; then \
		CHARGING_DATABASE_DIR=/var/lib/charging/$$(printf %s "$(CURDIR)" | cksum | cut -d' ' -f1)/postgres; \
		echo "the user postgres cannot enter $(CURDIR): PostgreSQL's data goes to $$CHARGING_DATABASE_DIR"; \
		export CHARGING_DATABASE_DIR; \
	fi; export CHARGING_CONSOLE_ADDRESS="$${CHARGING_CONSOLE_ADDRESS-127.0.0.1:8080}"; exec $(BIN)/charging serve

# A local Redis Cluster (3 primaries, 3 replicas, under var/cluster, made afresh) and
# `charging serve` on it, without Docker (README "Redis Cluster"); Ctrl-C stops both.
cluster: setup redis-server postgresql
	$(BIN)/python -m tests.redis_cluster

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The suite in TEST_WORKERS processes (pytest-xdist), each with its own redis-server,
# Redis Cluster and PostgreSQL; a module's tests stay together, in order, on one worker.
# Every worker collects the suite: test ids must not change between processes (no random
# values in parametrize ids).
TEST_WORKERS ?= 2
test: setup redis-server postgresql browser prometheus lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=30

bench: setup redis-server postgresql h2load door
	$(BIN)/python -m loadtest.bench
	$(BIN)/python -m loadtest.diameter_bench
	$(BIN)/python -m loadtest.tls_bench
	STREAM_BENCH_KINDS="$${STREAM_BENCH_KINDS-unary,stream,batch,event,door unary,door event,echo unary,echo stream,echo batch,echo event}" $(BIN)/python -m loadtest.stream_bench
	$(BIN)/python -m loadtest.nchf_bench
	$(BIN)/python -m loadtest.bill_bench
	$(BIN)/python -m loadtest.cdr_bench
	$(BIN)/python -m loadtest.scale_bench

# A randomized fault-injection run (README "Proof under faults"); a short fixed-seed run is
# part of make test (tests/test_chaos.py). CLUSTER=1: on a local 3+3 Redis Cluster.
SEED     ?= 1
DURATION ?= 60
chaos: setup redis-server postgresql faketime
	$(BIN)/python -m chaos --seed $(SEED) --duration $(DURATION)$(if $(CLUSTER), --cluster)

loadtest: setup
	$(BIN)/python -m pip install --quiet -e '.[load]'
	$(BIN)/locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 30s --host 127.0.0.1:50051

clean:
	rm -rf $(VENV) charging/v1 build *.egg-info .mypy_cache .ruff_cache .pytest_cache
