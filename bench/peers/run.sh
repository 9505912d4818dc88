#!/usr/bin/env bash
# fieldgate next to ThingsBoard IoT Gateway and modbus2mqtt, one command:
#
#     bash bench/peers/run.sh [peers.py options...]     # e.g. --levels 10x10,100x10
#
# Installs each peer from PyPI into its own venv under
# /var/cache/fieldgate-bench/peers (once; FIELDGATE_BENCH_CACHE moves it),
# builds fieldgate's release binary unless --fieldgate PATH is given, then
# runs bench/peers/peers.py: one Modbus TCP simulator and one Mosquitto for
# all of them, and a table at the end. Needs python3 (3.11) with venv, pip
# access to PyPI, and mosquitto in PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

cache=${FIELDGATE_BENCH_CACHE:-/var/cache/fieldgate-bench}/peers
mkdir -p "$cache"

# Pinned versions: the figures in BENCHMARKS.md were taken with these.
# pymodbus 3.9.2 is what thingsboard-gateway's Modbus connector pins (it
# pip-installs it at start-up otherwise); modbus2mqtt 0.73 declares no
# bound and fails with pymodbus >= 3.10 (it passes `slave=`).
venv() { # name packages...
    local dir=$cache/$1; shift
    local stamp="$dir/.installed-$(echo "$*" | md5sum | cut -c1-12)"
    [ -e "$stamp" ] && return 0
    echo "==> venv $dir: $*" >&2
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
    touch "$stamp"
}
venv harness paho-mqtt==2.1.0 pymodbus==3.9.2
venv tb thingsboard-gateway==3.8.5 pymodbus==3.9.2 pyserial pyserial-asyncio
venv m2m modbus2mqtt==0.73 pymodbus==3.9.2 paho-mqtt==2.1.0

args=("$@")
if [[ " ${args[*]-} " != *" --fieldgate "* ]]; then
    cargo build --release --locked -p fieldgate >&2
    args+=(--fieldgate target/release/fieldgate)
fi
exec "$cache/harness/bin/python" bench/peers/peers.py --venvs "$cache" "${args[@]}"
