#!/usr/bin/env bash
# THE test command of fieldgate: installs the system packages the tests need
# (when missing, with apt-get) and runs every test of the workspace:
#
#     bash tests/run-tests.sh            # = cargo test --workspace --all-features
#     bash tests/run-tests.sh -- --nocapture
#
# Extra arguments are passed to `cargo test`. The end-to-end tests start their
# own Mosquitto on free loopback ports; the system broker on 1883 is never used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# Debian packages the tests need at run time (mosquitto, mosquitto-clients,
# dbus for the private dbus-daemon of the BLE tests) and that the build needs
# besides Rust and a C compiler (make: jemalloc's build; libdbus is built
# from source, so no pkg-config or libdbus-1-dev).
# openssl makes the TLS test certificates; faketime fakes clock jumps;
# chromium is the real browser the status page tests drive (headless, DevTools
# protocol; fonts for readable screenshots); nats-server runs the core
# scenarios on NATS's MQTT listener and is the broker cluster of
# gateway/tests/broker_cluster.rs.
# python3 + python3-venv: the venvs of the Sparkplug host (pysparkplug,
# tests/sparkplug/ensure-venv.sh) and of the BLE parser cross-check
# (tests/ble-parsers/setup-venv.sh), cached in /var/cache/fieldgate-test.
needed=(mosquitto mosquitto-clients make openssl dbus faketime chromium fonts-dejavu-core python3 python3-venv nats-server)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${needed[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
elif ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "run-tests.sh: mosquitto is not installed and this is not a Debian-like system;" >&2
    echo "install mosquitto, mosquitto-clients, make, openssl and dbus, and run again." >&2
    exit 1
fi

if [ "${#missing[@]}" -gt 0 ]; then
    echo "run-tests.sh: installing ${missing[*]}" >&2
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
fi

exec cargo test --workspace --all-features "$@"
