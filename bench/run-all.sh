#!/usr/bin/env bash
# Runs the benchmark suite of issue #9 with the release binaries and writes
# every run's output line to RESULTS_DIR (default: bench-results/<date>).
# Usage: bash bench/run-all.sh [RESULTS_DIR]
#   RUNS=3            repetitions of each throughput/latency scenario
#   FLATNESS=10m      length of the flatness run (0 skips it)
#   SKIP_BUILD=1      use the existing target/release binaries
#   SCALE=1           also the 10 000 x 20 scale runs (issue #26; ~5 minutes)
#   PEERS=1           also bench/peers/run.sh (installs the peers from PyPI)
# Build first (fat LTO, several minutes):
#   cargo build --release -p fieldgate -p fieldgate-bench
set -euo pipefail

cd "$(dirname "$0")/.."
out=${1:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
runs=${RUNS:-3}
flatness=${FLATNESS:-10m}
mkdir -p "$out"
if [[ -z "${SKIP_BUILD:-}" ]]; then
    cargo build --release -p fieldgate -p fieldgate-bench
fi
bench=target/release/fieldgate-bench

{
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (dirty)')"
    echo "date: $(date -u +%FT%TZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
    echo "memory: $(free -m | awk '/^Mem:/ {print $2}') MiB"
    echo "kernel: $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME")"
    echo "rustc: $(rustc --version)"
    echo "mosquitto: $(/usr/sbin/mosquitto -h 2>/dev/null | head -1 || true)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt"

# Runs one scenario RUNS times, appending each result line to $out/$name.txt.
repeat() {
    local name=$1
    shift
    for i in $(seq "$runs"); do
        echo "== $name run $i: $*" >&2
        "$bench" "$@" | tee -a "$out/$name.txt"
    done
}

# 6. cost per value, dummy driver alone (plus a high-rate point)
repeat dummy-1000x20-1s dummy --devices 1000 --properties 20 --interval 1s --duration 30s
repeat dummy-1000x20-100ms dummy --devices 1000 --properties 20 --interval 100ms --duration 30s
# 1. Neuron scenario
repeat neuron modbus --devices 500 --registers 30 --interval 1s --duration 30s
# 2. peak throughput (the point found by the search in BENCHMARKS.md)
repeat peak modbus --devices 180 --registers 125 --interval 8ms --duration 30s
# 3. command latency
repeat latency-c1 latency --commands 10000
repeat latency-c8 latency --commands 10000 --devices 8 --registers 10 --concurrency 8
# 4. start-up
"$bench" startup --runs 9 | tee "$out/startup-demo-mosquitto.txt"
"$bench" startup --runs 9 --broker embedded | tee "$out/startup-demo-embedded.txt"
"$bench" startup --runs 5 --devices 1000 | tee "$out/startup-1000.txt"
# idle wake-ups
"$bench" idle --duration 30s | tee "$out/idle-demo-embedded.txt"
"$bench" idle --duration 30s --broker mosquitto | tee "$out/idle-demo-mosquitto.txt"
"$bench" idle --duration 30s --config empty | tee "$out/idle-empty.txt"
# scaling
"$bench" scale --devices 10,100,500,1000 --properties 10 --interval 1s | tee "$out/scale-devices.txt"
"$bench" scale --devices 100 --properties 1,10,50,100 --interval 1s | tee "$out/scale-properties.txt"
"$bench" scale --devices 100 --properties 10 --interval 10s,1s,100ms,20ms | tee "$out/scale-interval.txt"
"$bench" scale --driver modbus --devices 10,100,500 --properties 30 --interval 1s | tee "$out/scale-modbus-devices.txt"
# scale: 10 000 devices x 20 properties (issue #26)
if [[ -n "${SCALE:-}" ]]; then
    "$bench" startup --runs 3 --devices 10000 --properties 20 | tee "$out/startup-10000x20.txt"
    "$bench" flatness --devices 10000 --properties 20 --interval 1s --warmup 30s --duration 60s \
        --restart-every 0s --sample-every 10s 2> "$out/scale-10000x20-samples.txt" | tee "$out/scale-10000x20.txt"
fi
# fieldgate next to other gateways
if [[ -n "${PEERS:-}" ]]; then
    bash bench/peers/run.sh --fieldgate target/release/fieldgate --out "$out/peers.json" | tee "$out/peers.txt"
fi
# 5. memory flatness (long)
if [[ "$flatness" != 0 ]]; then
    # The samples go to stderr as the run proceeds.
    "$bench" flatness --duration "$flatness" 2> "$out/flatness-samples.txt" | tee "$out/flatness.txt"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/machine.txt"
echo "results in $out"
