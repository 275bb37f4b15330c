#!/bin/sh
# Runs one libFuzzer target of the Fuzz/ package for SECONDS seconds (docs/FUZZING.md):
#   scripts/fuzz.sh TARGET SECONDS [extra libFuzzer flags]
# Builds the fuzz package (debug, fuzzer + ASan) if needed. New inputs go to
# /tmp/ocapn-fuzz/TARGET (the committed seeds in Fuzz/corpus/TARGET are only read); crashes
# are written as /tmp/ocapn-fuzz/TARGET-crash-*. Prints libFuzzer's final statistics.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer flags]" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/Fuzz"
if [ ! -d "Sources/$target" ]; then
    echo "fuzz.sh: no target $target (see Fuzz/Sources)" >&2
    exit 2
fi
swift build -c debug --product "$target" --sanitize fuzzer -Xswiftc -sanitize=fuzzer,address \
    -Xcc -fsanitize=address -Xswiftc -use-ld=lld >&2
case $target in
    FuzzHandshake) maxlen=1024 ;;
    FuzzFrameReceiver) maxlen=8192 ;;
    FuzzSyrupDecode|FuzzAuditVerifier) maxlen=16384 ;;
    *) maxlen=4096 ;;
esac
scratch=/tmp/ocapn-fuzz/$target
mkdir -p "$scratch"
SWIFT_BACKTRACE=enable=no exec ".build/debug/$target" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 \
    -max_len="$maxlen" -print_final_stats=1 -artifact_prefix="$scratch-" "$@" "$scratch" "corpus/$target"
