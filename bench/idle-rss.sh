#!/usr/bin/env bash
# Idle memory of the daemon: runs BINARY with CONFIG for SECONDS (default 30),
# then prints VmRSS and VmHWM from /proc/<pid>/status and stops it (SIGTERM).
#
#     bash bench/idle-rss.sh /usr/bin/fieldgate /etc/fieldgate/config.yaml 30
#
# Run it as the service user to match the service (e.g. `runuser -u fieldgate --`).
set -euo pipefail
bin=${1:-/usr/bin/fieldgate}
cfg=${2:-/etc/fieldgate/config.yaml}
secs=${3:-30}
RUST_LOG=${RUST_LOG:-warn} "$bin" run -c "$cfg" >/dev/null 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
sleep "$secs"
kill -0 "$pid" 2>/dev/null || { echo "fieldgate exited early" >&2; exit 1; }
grep -E '^(VmRSS|VmHWM|Threads):' "/proc/$pid/status"
kill -TERM "$pid"
wait "$pid" || true
trap - EXIT
