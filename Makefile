# Each target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
PY ?= python3
VENV := .venv
BENCH_VENV := .venv-bench
RAY_VENV := .venv-ray
STAMP := $(VENV)/.installed
SOURCES := $(shell find kernel state transports plugins -name '*.py' 2>/dev/null | sort)

.PHONY: demo demo-cluster test lint typecheck pytest bench bench-net bench-cluster bench-plugins clean servers

# Re-install (strict editable mode: a tree of links mypy and pytest both see) whenever
# pyproject.toml changes or a module is added or removed.
$(VENV)/.files: FORCE
	@mkdir -p $(VENV)
	@echo "$(SOURCES)" | cmp -s - $@ || echo "$(SOURCES)" > $@
FORCE:

$(STAMP): pyproject.toml $(VENV)/.files
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test,cli,uvloop]' --config-settings editable_mode=strict
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kerna demo --docs 20000

# The same pipeline across 3 `kerna node` processes on an etcd the demo starts and stops.
demo-cluster: $(STAMP) servers
	$(VENV)/bin/kerna demo --nodes 3 --docs 5000

lint: $(STAMP)
	$(VENV)/bin/ruff check kernel state transports plugins tests benchmarks examples
	$(VENV)/bin/ruff format --check kernel state transports plugins tests benchmarks examples README.md ARCHITECTURE.md

# tests.typecheck: modules whose assert_type calls prove the public API's static types
# (typed asks); examples/ too: they are what users copy, so they type-check strictly.
typecheck: $(STAMP)
	$(VENV)/bin/mypy -p kerna -p tests.typecheck
	$(VENV)/bin/mypy examples

# The servers the integration tests start themselves (kerna.testing's fixtures: etcd,
# nats-server, redis-server) and nft for the netns partition fixture: installed here
# when missing (as root); otherwise those tests skip with the reason (servers fail
# under KERNA_REQUIRE_SERVERS=1).
servers:
	@command -v etcd >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq etcd-server etcd-client >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq etcd-server etcd-client)) ; \
	  else echo "etcd is not installed and this is not root: etcd tests will skip"; fi; }
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq redis-server >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq redis-server)) ; \
	  else echo "redis-server is not installed and this is not root: redis tests will skip"; fi; }
	@command -v nats-server >/dev/null 2>&1 || test -x /usr/sbin/nats-server || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq nats-server >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq nats-server)) ; \
	  else echo "nats-server is not installed and this is not root: nats tests will skip"; fi; }
	@command -v nft >/dev/null 2>&1 || test -x /usr/sbin/nft || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq nftables >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq nftables)) ; \
	  else echo "nft is not installed and this is not root: the partition tests will skip"; fi; }

pytest: $(STAMP) servers
	$(VENV)/bin/python -m pytest -q

test: lint typecheck pytest

$(BENCH_VENV)/.installed: pyproject.toml benchmarks/requirements.txt $(VENV)/.files
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[cli,uvloop]' -r benchmarks/requirements.txt
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python -m benchmarks.run_all

# Cross-process (ISSUE8 section 6): starts its own servers and nats-server, ~10 minutes.
bench-net: $(BENCH_VENV)/.installed servers
	$(BENCH_VENV)/bin/python -m benchmarks.net_bench --pin

# The cluster (ISSUE9 section 7): starts its own etcd and node processes, ~4 minutes.
bench-cluster: $(BENCH_VENV)/.installed servers
	$(BENCH_VENV)/bin/python -m benchmarks.cluster_bench --pin

# kerna.plugins (ISSUE10 section 6): @batched, the cache hit, and Ray Serve's @serve.batch
# as the peer. Ray has a venv of its own: ray[serve] needs protobuf >= 7, autogen-core
# (in .venv-bench) pins protobuf ~= 5.29. About a minute.
$(RAY_VENV)/.installed: pyproject.toml benchmarks/requirements-ray.txt $(VENV)/.files
	test -x $(RAY_VENV)/bin/python || $(PY) -m venv $(RAY_VENV)
	$(RAY_VENV)/bin/python -m pip install -q --upgrade pip
	$(RAY_VENV)/bin/python -m pip install -q -e '.[plugins]' -r benchmarks/requirements-ray.txt
	touch $@

bench-plugins: $(RAY_VENV)/.installed
	$(RAY_VENV)/bin/python -m benchmarks.plugins_bench --write

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(RAY_VENV) build *.egg-info
