# The two commands of a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
SWIFT ?= swift

.PHONY: deps build release demo test bench clean

deps:
	@./scripts/ensure-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product ocapn-uds

demo: release
	./.build/release/ocapn-uds demo

test: deps
	$(SWIFT) test

bench: release
	./.build/release/ocapn-uds bench

clean:
	$(SWIFT) package clean
