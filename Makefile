# fingerprintd: two commands set everything up on a fresh Debian machine.
#   make run   - create .venv, install, start the service on embedded defaults
#                (capture on all interfaces, port 25; gRPC on 127.0.0.1:50051; needs root)
#   make test  - also install what the tests need (Debian packages when root) and run pytest
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
# Debian packages: building pcapy-ng needs libpcap's headers and a compiler.
RUN_DEBS  := libpcap-dev libmilter-dev gcc python3-dev python3-venv
TEST_DEBS := $(RUN_DEBS) p0f tcpdump iproute2 ethtool time openssl rspamd postfix swaks libio-socket-inet6-perl spamassassin spamc spamd redis-server \
             amavisd-new systemd adduser logrotate \
             nmap masscan zmap

.PHONY: run sample-replay test bench lint proto sample debs-run debs-test clean

run: debs-run $(VENV)/.installed $(VENV)/.accel
	$(VENV)/bin/fingerprintd serve

# Replay the bundled capture of real kernel SYNs (no privileges needed).
sample-replay: $(VENV)/.installed
	$(VENV)/bin/fingerprintd replay samples/kernel-syn.pcap

test: debs-test $(VENV)/.installed $(VENV)/.accel tests/node/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

# Real p0f clients from the npm registry, for the p0f-socket tests (needs node and npm).
tests/node/.installed: tests/node/package.json
	@if command -v npm >/dev/null; then \
		npm install --prefix tests/node --no-audit --no-fund --silent && touch $@; \
	else echo "npm not found: the Haraka client test will skip" >&2; fi

bench: debs-test $(VENV)/.installed
	$(VENV)/bin/pytest -q -s benchmarks --benchmark-only --benchmark-columns=min,median,max,rounds

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# Regenerate the gRPC code from proto/ (tests/test_proto.py checks it is current).
proto: $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. \
		proto/fingerprintd/v1/fingerprintd.proto

# Re-record samples/kernel-syn.pcap from real kernel SYNs (root: network namespaces).
sample: debs-test $(VENV)/.installed
	$(PY) -m tests.netns samples/kernel-syn.pcap

# The editable install puts the checkout on sys.path (compat mode): setuptools' default finder hook costs
# every command about 8 ms of startup, which is most of a small replay's run.
EDITABLE := --config-settings editable_mode=compat

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(EDITABLE) -e '.[test]'
	touch $@

# The compiled accelerator (setup.py, fingerprintd/accel.py), rebuilt when its sources change: flows.py and
# nat.py are compiled as they are, so an edit there needs a rebuild (until then the pure path runs).
# A failed build leaves the pure-Python path working.
ACCEL_SRC := setup.py $(wildcard fingerprintd/*.pyx fingerprintd/*.pxd) fingerprintd/flows.py fingerprintd/nat.py \
	fingerprintd/signatures.py fingerprintd/matcher.py fingerprintd/hosts.py
$(VENV)/.accel: $(VENV)/.installed $(ACCEL_SRC)
	$(PY) -m pip install -q $(EDITABLE) --no-deps -e .
	touch $@

# apt-get only when root and only for what is missing.
debs-run:
	@sh scripts/debs.sh $(RUN_DEBS)

debs-test:
	@sh scripts/debs.sh $(TEST_DEBS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks *.egg-info build fingerprintd/*.so fingerprintd/_speedups.c fingerprintd/_replay.c fingerprintd/_csock.c
