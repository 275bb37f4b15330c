#!/usr/bin/env bash
# Fails when the compiler reported a diagnostic in our own code (Sources/, Tests/,
# Examples/Sources/) in the builds under the given directories: warnings stay at zero.
#
# It reads the per-file diagnostic files (*.dia) the compiler writes next to the objects, so an
# incremental build that recompiled nothing still reports a warning printed earlier; a fixed
# file's .dia is rewritten empty by its next compile. Errors stop a build by themselves, so any
# diagnostic left in a .dia is a warning (or a note attached to one). Dependencies are not ours
# and are not checked.
#
# usage: scripts/check-warnings.sh BUILD-DIR...   (e.g. .build/debug Examples/.build/debug)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
ours="$root/(Sources|Tests|Examples/Sources)/[^[:cntrl:]]*\.swift"
found=0
for dir in "$@"; do
    [ -d "$dir" ] || { echo "check-warnings: no build at $dir" >&2; exit 2; }
    while IFS= read -r -d '' dia; do
        # In batch mode a .dia can hold diagnostics about another file of its batch; when that
        # file has changed since, it was compiled again and its current diagnostics are in a
        # newer .dia, so a source newer than this .dia makes the record stale.
        current=0
        while IFS= read -r source; do
            [ "$source" -nt "$dia" ] || current=1
        done < <(grep -aoE "$ours" "$dia" | sort -u)
        if [ "$current" -eq 1 ]; then
            if [ "$found" -eq 0 ]; then echo "compiler warnings in our code (the build must stay warning-free):" >&2; fi
            found=1
            # The printable strings of the record: file paths and messages.
            grep -aoE '[[:print:]]{8,}' "$dia" | grep -vE '^(DIAG|clang|swift)' | sed 's/^/  /' >&2
        fi
    done < <(find -H "$dir" -name '*.dia' -print0)  # -H: .build/debug is a symlink
done
if [ "$found" -ne 0 ]; then exit 1; fi
echo "check-warnings: no compiler warnings in Sources/, Tests/ or Examples/ ($*)"
