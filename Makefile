# The two commands of a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
SWIFT ?= swift

.PHONY: deps build release demo test examples check-warnings bench clean

deps:
	@./scripts/ensure-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product ocapn-uds

demo: release
	./.build/release/ocapn-uds demo

# In parallel (Swift Testing's default; `--parallel` says so, `--disable-xctest` because there are
# no XCTest cases). Suites that block run on threads of their own (`.ownThread`, so the Swift
# concurrency pool stays free for deadlines); tests that change process-wide state (the open-file
# limit) or count the process's descriptors run as exit tests, in child processes.
# A bound on the whole run, so a hang fails in minutes instead of eating CI's time.
test: deps examples check-warnings
	timeout 1500 $(SWIFT) test --parallel --disable-xctest

# Examples/: README.md's and docs/PEER.md's code as a package using this checkout; the test
# suite runs its programs (ExamplesTests), and under `make test` a missing build is a failure.
# SwiftPM does not re-plan a path dependency whose files were added or removed, so the
# examples' build folder is dropped whenever the list of files under Sources/ changes.
examples: deps
	@sig=$$(find Sources -type f | LC_ALL=C sort | sha256sum | cut -c1-16); \
	if [ "$$(cat Examples/.build/.sources-list 2>/dev/null)" != "$$sig" ]; then \
		rm -rf Examples/.build; mkdir -p Examples/.build; echo "$$sig" > Examples/.build/.sources-list; \
	fi
	$(SWIFT) build --package-path Examples

# Zero compiler warnings in Sources/, Tests/ and Examples/, in the test build and in the release
# build when there is one (scripts/check-warnings.sh reads the compiler's diagnostics files, so
# an incremental build still reports an earlier warning). `make demo` never fails on a warning.
check-warnings: deps examples
	$(SWIFT) build --build-tests
	@./scripts/check-warnings.sh .build/debug Examples/.build/debug $$(test -d .build/release && echo .build/release)

test: export OCAPN_UDS_EXAMPLES = required

bench: release
	./.build/release/ocapn-uds bench

clean:
	$(SWIFT) package clean
