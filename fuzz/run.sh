#!/usr/bin/env bash
# Runs every fuzz target for SECONDS_PER_TARGET seconds (default 600) and
# prints a summary: executions, corpus, and the crash/timeout/OOM inputs
# found (written to fuzz/artifacts/<target>/). Needs the nightly toolchain
# and cargo-fuzz (`cargo install cargo-fuzz`); see docs/fuzzing.md.
#
#   fuzz/run.sh                 # every target, 10 minutes each
#   fuzz/run.sh 60 config       # only `config`, one minute
#   JOBS=2 fuzz/run.sh          # two targets at a time (one core each)
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/) plus
# what earlier runs kept (fuzz/corpus/<target>/, not committed). A target
# stops at its first finding; turn the finding into a regression test
# (gateway/tests/fuzz_regressions/<target>/) and fix it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

SECONDS_PER_TARGET="${1:-600}"
shift || true
ALL_TARGETS=(config set_payload modbus_decode store_recovery topics)
if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
JOBS="${JOBS:-1}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"

if ! cargo "+$TOOLCHAIN" fuzz --version >/dev/null 2>&1; then
    echo "run.sh: needs cargo-fuzz and the $TOOLCHAIN toolchain:" >&2
    echo "  rustup toolchain install $TOOLCHAIN && cargo install cargo-fuzz" >&2
    exit 2
fi

mkdir -p logs corpus artifacts
echo "building ${TARGETS[*]} ..."
for t in "${TARGETS[@]}"; do
    cargo "+$TOOLCHAIN" fuzz build "$t" >/dev/null
done

run_target() {
    local t="$1"
    local log="logs/$t.log"
    mkdir -p "corpus/$t" "artifacts/$t"
    # Findings present before this run do not count for it.
    ls "artifacts/$t" >"logs/$t.before" 2>/dev/null || true
    local extra=()
    if [ -f "dicts/$t.dict" ]; then
        extra+=("-dict=dicts/$t.dict")
    fi
    case "$t" in
        # These run tokio and the store's writer thread: glibc's per-thread
        # destructor list of a thread that is still alive shows up as a
        # 64-byte "leak" now and then, which is not one (docs/fuzzing.md).
        set_payload | store_recovery) extra+=("-detect_leaks=0") ;;
    esac
    local start end
    start=$(date +%s)
    # -timeout: one input taking longer is a finding (a hang).
    cargo "+$TOOLCHAIN" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || true
    end=$(date +%s)
    echo $((end - start)) >"logs/$t.seconds"
}

running=0
for t in "${TARGETS[@]}"; do
    echo "fuzzing $t for ${SECONDS_PER_TARGET}s (log: fuzz/logs/$t.log)"
    run_target "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

echo
printf '%-16s %8s %14s %10s %8s  %s\n' target seconds runs exec/s corpus findings
status=0
for t in "${TARGETS[@]}"; do
    log="logs/$t.log"
    runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1 || true)
    speed=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1 || true)
    if [ -z "$runs" ]; then
        # Stopped by a finding: the last status line has the count.
        runs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    fi
    corpus=$(find "corpus/$t" -type f | wc -l)
    new=$(comm -13 <(sort "logs/$t.before") <(ls "artifacts/$t" | sort) | tr '\n' ' ')
    findings="none"
    if [ -n "$new" ]; then
        findings="$new"
        status=1
    elif grep -qE 'ERROR: libFuzzer|deadly signal|panicked' "$log"; then
        findings="see $log"
        status=1
    fi
    printf '%-16s %8s %14s %10s %8s  %s\n' "$t" "$(cat "logs/$t.seconds")" "${runs:-?}" \
        "${speed:-?}" "$corpus" "$findings"
done
exit "$status"
