#!/usr/bin/env bash
# Soak test: runs the fieldgate binary for a set time (default 30 min) while
# its broker and its Modbus devices flap, and prints messages requested /
# delivered / lost, reconnects and the gateway's RSS over time (a Markdown
# table; also written to <run dir>/report.md). Exit 0 when nothing was lost
# and the gateway ran throughout.
#
#     bash tests/soak.sh                      # 30 min, release build
#     bash tests/soak.sh 5m                   # another duration
#     bash tests/soak.sh 2h --kill            # SIGKILL the broker instead of SIGTERM
#     bash tests/soak.sh 30m --file-store     # the file store instead of memory
#     FIELDGATE_PROFILE=dev bash tests/soak.sh 10m   # the debug binary (no LTO build)
#
# Other options (after the duration) go to the harness; see
#     cargo run -p fieldgate-bench --bin soak -- --help
# (--devices, --interval, --modbus, --broker-every, --broker-down,
#  --device-every, --device-down, --sample, --dir).
# Needs mosquitto (tests/run-tests.sh installs it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

duration=30m
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    duration=$1
    shift
fi

profile=${FIELDGATE_PROFILE:-release}
if [ "$profile" = dev ]; then
    cargo build -p fieldgate
    bin=target/debug/fieldgate
else
    cargo build --release -p fieldgate
    bin=target/release/fieldgate
fi
# The harness itself needs no optimisation.
cargo build -p fieldgate-bench --bin soak

exec target/debug/soak --fieldgate "$bin" --duration "$duration" "$@"
