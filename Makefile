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

# Serial: a few tests change process-wide state (the open-file limit) and several check
# deadlines of a few hundred milliseconds; in parallel on 2 cores they interfere. The suite
# takes about 20 s either way. `swift test` (parallel) works for day-to-day use.
# A bound on the whole run, so a hang fails in minutes instead of eating CI's time.
test: deps
	timeout 1500 $(SWIFT) test --no-parallel

bench: release
	./.build/release/ocapn-uds bench

clean:
	$(SWIFT) package clean
