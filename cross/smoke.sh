#!/usr/bin/env bash
# Smoke test of a cross-built fieldgate under qemu-user (run after
# `cross/build.sh <arch>`):
#
#     bash cross/smoke.sh arm64|armhf|amd64 [path/to/fieldgate]
#
# 1. `fieldgate --version`
# 2. `fieldgate check -c` on every shipped config (configs/*.yaml)
# 3. the demo (configs/demo.yaml: simulated devices + the embedded broker, on
#    free ports) for a few seconds, with mosquitto_sub (native) reading its
#    state messages, then SIGTERM and exit status 0.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
arch=${1:-}
case "$arch" in
    amd64) target=x86_64-unknown-linux-gnu; run=() ;;
    arm64)
        target=aarch64-unknown-linux-gnu
        run=(qemu-aarch64-static)
        # As for armhf: the cross libc only when no arm64 loader is installed
        # (FIELDGATE_CROSS_BUILD_STD=1 setups install no libc6:arm64).
        [ -e /lib/ld-linux-aarch64.so.1 ] || run+=(-L /usr/aarch64-linux-gnu)
        ;;
    armhf)
        target=armv7-unknown-linux-gnueabihf
        run=(qemu-arm-static)
        # With libc6:armhf installed (multiarch) the loader is found as is; a
        # -L prefix would mix two libcs (threads hang). Only without it use
        # the cross libc.
        [ -e /lib/ld-linux-armhf.so.3 ] || run+=(-L /usr/arm-linux-gnueabihf)
        ;;
    *) echo "usage: $0 amd64|arm64|armhf [binary]" >&2; exit 2 ;;
esac
if [ "$arch" = amd64 ]; then
    bin=${2:-target/$target/release/fieldgate}
else
    bin=${2:-target/cross-$arch/$target/release/fieldgate}
fi
[ -x "$bin" ] || { echo "no binary $bin: run cross/build.sh $arch" >&2; exit 1; }
command -v mosquitto_sub >/dev/null || { echo "mosquitto_sub missing (apt install mosquitto-clients)" >&2; exit 1; }
fg() { "${run[@]}" "$bin" "$@"; }

echo "==> $arch: $(file -b "$bin" | cut -d, -f1-2)"
echo "==> fieldgate --version"
fg --version

for cfg in configs/*.yaml; do
    echo "==> fieldgate check -c $cfg"
    fg check -c "$cfg" >/dev/null
    echo "ok"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pid=
cleanup() {
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mqtt=$(free_port)
metrics=$(free_port)
sed -e "s#127.0.0.1:11883#127.0.0.1:$mqtt#" -e "s#127.0.0.1:9880#127.0.0.1:$metrics#" \
    -e "s#/tmp/fieldgate-demo#$work/state#" configs/demo.yaml >"$work/demo.yaml"
echo "==> demo under emulation: embedded broker on $mqtt for a few seconds"
RUST_LOG=info "${run[@]}" "$bin" run -c "$work/demo.yaml" >"$work/log" 2>&1 &
pid=$!
# Wait for the embedded broker to accept connections (emulation is slow).
for _ in $(seq 1 120); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$mqtt),1)" 2>/dev/null; then break; fi
    kill -0 "$pid" 2>/dev/null || { cat "$work/log"; echo "fieldgate exited" >&2; exit 1; }
    sleep 0.5
done
# Nine messages: the will topic's `online`, up to two retained `$health`
# documents (degraded while the session connects, then ok) and state
# messages of the two simulated devices (they publish every 1-2 s); at least
# five must be state.
mosquitto_sub -h 127.0.0.1 -p "$mqtt" -t 'fieldgate/demo/+' -v -C 9 -W 30 | tee "$work/msgs"
n=$(grep -c '^fieldgate/demo/[^$ ]* {' "$work/msgs" || true)
[ "$n" -ge 5 ] || { cat "$work/log"; echo "only $n state messages" >&2; exit 1; }
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || { cat "$work/log"; echo "exit status $status after SIGTERM" >&2; exit 1; }
echo "==> smoke $arch ok: version, $(ls configs/*.yaml | wc -l) configs checked, $n state messages, clean stop"
