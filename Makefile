# Conveniences over cargo. The two commands a newcomer needs:
#   make demo    start a host with the example tenants
#   cargo test   run every test (builds the guests too)

GUEST_DIR := target/guests/wasm32-wasip2/guest
EXAMPLES  := $(notdir $(wildcard tenant-examples/*))
LISTEN    ?= 127.0.0.1:3000

.PHONY: demo guests bench test lint

## Build the example tenants for wasm32-wasip2.
guests:
	cargo build --target wasm32-wasip2 --profile guest --target-dir target/guests \
		$(foreach e,$(EXAMPLES),-p $(e))

## Start a host on $(LISTEN) serving every example tenant.
demo: guests
	cargo run --release -p lodge-host -- serve --listen $(LISTEN) --config lodge.toml \
		$(foreach e,$(EXAMPLES),--app $(e)=$(GUEST_DIR)/$(e).wasm)

## Throughput and latency of the hello example (see docs/benchmarks.md).
bench: guests
	cargo run --release -p lodge-host -- bench $(BENCH_ARGS)

test:
	cargo test

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
