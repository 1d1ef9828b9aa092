# Conveniences over cargo. The two commands a newcomer needs:
#   make demo    start a host with the example tenants
#   cargo test   run every test (builds the guests too)

GUEST_DIR   := target/guests/wasm32-wasip2/guest
# Rust examples are cargo packages; JavaScript (app.js) and Python (app.py)
# ones are built by their scripts into target/guests/js and target/guests/py.
EXAMPLES    := $(notdir $(patsubst %/Cargo.toml,%,$(wildcard tenant-examples/*/Cargo.toml)))
JS_EXAMPLES := $(notdir $(patsubst %/app.js,%,$(wildcard tenant-examples/*/app.js)))
PY_EXAMPLES := $(notdir $(patsubst %/app.py,%,$(wildcard tenant-examples/*/app.py)))
LISTEN      ?= 127.0.0.1:3000

.PHONY: demo guests bench test lint

## Build the example tenants: Rust for wasm32-wasip2, JavaScript, Python.
guests:
	cargo build --target wasm32-wasip2 --profile guest --target-dir target/guests \
		$(foreach e,$(EXAMPLES),-p $(e))
	bash scripts/build-js-guests.sh
	bash scripts/build-py-guests.sh

## Start a host on $(LISTEN) serving every example tenant.
demo: guests
	cargo run --release -p lodge-host -- serve --listen $(LISTEN) --config lodge.toml \
		$(foreach e,$(EXAMPLES),--app $(e)=$(GUEST_DIR)/$(e).wasm) \
		$(foreach e,$(JS_EXAMPLES),--app $(e)=target/guests/js/$(e).wasm) \
		$(foreach e,$(PY_EXAMPLES),--app $(e)=target/guests/py/$(e).wasm)

## Throughput and latency of the hello example (see docs/benchmarks.md).
bench: guests
	cargo run --release -p lodge-host -- bench $(BENCH_ARGS)

test:
	cargo test

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
