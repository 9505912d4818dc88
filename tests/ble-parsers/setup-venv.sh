#!/bin/sh
# Creates (once) the venv with the BLE advertisement parsers Home Assistant
# uses, for the decoder cross-check tests (gateway/tests/e2e/ble_parsers.rs).
# Prints the venv's python on stdout; says on stderr when it had to install.
set -eu
VENV="${FIELDGATE_BLE_PARSERS_VENV:-/var/cache/fieldgate-test/ble-parsers}"
STAMP="$VENV/.fieldgate-ready-2"
if [ ! -f "$STAMP" ]; then
    echo "ble-parsers: installing bthome-ble, xiaomi-ble, ruuvitag-ble, atc-ble into $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        'bthome-ble>=3.9' 'xiaomi-ble>=0.30' 'ruuvitag-ble>=0.1.2' 'atc-ble>=0.1' >&2
    touch "$STAMP"
fi
echo "$VENV/bin/python"
