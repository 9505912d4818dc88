#!/usr/bin/env bash
# Creates (once) the Python venv with pysparkplug, the Sparkplug B host
# implementation the e2e test drives, cached outside the checkout so later
# runs reuse it. Prints the venv's python on stdout; says on stderr when it
# had to install. pysparkplug 0.3.0 declares `paho-mqtt` without a bound,
# but it calls paho's 1.x API (`Client()` without a callback API version,
# `message_retry_set`), which paho-mqtt 2.x removed: paho-mqtt is pinned to
# 1.6.1, the last 1.x.
#
#     tests/sparkplug/ensure-venv.sh   # -> /var/cache/fieldgate-test/sparkplug/venv/bin/python
set -euo pipefail

PYSPARKPLUG=0.3.0
PAHO=1.6.1
CACHE="${FIELDGATE_TEST_CACHE:-/var/cache/fieldgate-test}/sparkplug"
VENV="$CACHE/venv"
STAMP="$CACHE/installed-pysparkplug-$PYSPARKPLUG-paho-$PAHO"

if [ ! -f "$STAMP" ] || [ ! -x "$VENV/bin/python" ]; then
    echo "ensure-venv.sh: installing pysparkplug $PYSPARKPLUG into $VENV" >&2
    mkdir -p "$CACHE"
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "pysparkplug==$PYSPARKPLUG" "paho-mqtt==$PAHO" >&2
    "$VENV/bin/python" -c "import pysparkplug; pysparkplug.Client(client_id='probe')" >&2
    touch "$STAMP"
fi
echo "$VENV/bin/python"
