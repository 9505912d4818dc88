#!/usr/bin/env bash
# Packaging test (run by .ci/run after the test suite, as root on a Debian
# machine where systemd is not PID 1): builds the amd64 .deb, installs it with
# dpkg, checks files, owners and modes, validates the installed config,
# upgrades over itself with a locally edited config (the edit must survive),
# upgrades to a repacked higher version with a config the new version rejects
# (the running service must be left alone, the errors printed) and then with
# the config fixed (the restart must be asked of systemd), removes and purges
# it (nothing may be left behind), and verifies the unit.
#
#     bash tests/package-test.sh            # builds with cross/build.sh amd64 (release)
#     bash tests/package-test.sh some.deb   # tests an existing package
#     FIELDGATE_PACKAGE_PROFILE=dev bash tests/package-test.sh
#         packages the debug binary the test suite already built (what .ci/run
#         does: a cold fat-LTO release build would take most of CI's budget on
#         2 cores; the package's files, scripts and unit are the same)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n--> %s\n' "$*"; }
fail() { echo "package-test: FAIL: $*" >&2; exit 1; }

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
needed=(dpkg-dev adduser systemd)
missing=()
for p in "${needed[@]}"; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
fi
if ! command -v cargo-deb >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ]; then
    step "cargo install cargo-deb --locked"
    cargo install cargo-deb --locked
fi

if [ $# -gt 0 ]; then
    deb=$1
elif [ "${FIELDGATE_PACKAGE_PROFILE:-release}" = dev ]; then
    step "cargo deb --profile dev (the debug binary)"
    rm -f dist/fieldgate_*_amd64.deb
    # The default features, as cross/build.sh: not the test hooks of
    # `fault-injection` (checked below).
    cargo build -p fieldgate
    cargo_deb=$(command -v cargo-deb || echo "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb")
    "$cargo_deb" deb --no-build -p fieldgate --profile dev --output dist/
    deb=$(ls dist/fieldgate_*_amd64.deb)
else
    step "bash cross/build.sh amd64"
    rm -f dist/fieldgate_*_amd64.deb
    bash cross/build.sh amd64
    deb=$(ls dist/fieldgate_*_amd64.deb)
fi
[ -f "$deb" ] || fail "no package $deb"

if installed fieldgate; then
    fail "fieldgate is already installed on this machine; refusing to touch it"
fi
purge() { "${sudo[@]}" dpkg --purge fieldgate >/dev/null 2>&1 || true; }
trap purge EXIT

step "package metadata"
dpkg-deb --info "$deb"
field() { dpkg-deb --field "$deb" "$1"; }
[ "$(field Package)" = fieldgate ] || fail "Package"
[ "$(field Architecture)" = amd64 ] || fail "Architecture"
for f in Version Maintainer Description Section Priority Depends; do
    [ -n "$(field "$f")" ] || fail "empty $f"
done
field Depends | grep -q libc6 || fail "Depends lacks libc6: $(field Depends)"
field Depends | grep -q adduser || fail "Depends lacks adduser"
# libdbus is built into the binary (libdbus-sys `vendored`): no run-time libdbus-1-3.
if field Depends | grep -q libdbus; then fail "Depends names libdbus: $(field Depends)"; fi
field Suggests | grep -q bluez || fail "Suggests lacks bluez (the BLE driver talks to bluetoothd)"
# (Outputs are captured before grep -q: with pipefail, grep -q exiting at
# its first match kills the writer with SIGPIPE and fails the pipeline.)
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
grep -qx /etc/fieldgate/config.yaml <<<"$conffiles" ||
    fail "/etc/fieldgate/config.yaml is not a conffile"
dpkg-deb --contents "$deb"
contents=$(dpkg-deb --contents "$deb")
grep -q 'usr/share/doc/fieldgate/copyright' <<<"$contents" || fail "no copyright file"

step "dpkg -i"
"${sudo[@]}" dpkg -i "$deb"
unit=$(dpkg -L fieldgate | grep '/systemd/system/fieldgate.service$') || fail "unit not installed"

expect_stat() { # path owner:group mode
    local got
    got=$(stat -c '%U:%G %a' "$1") || fail "$1 missing"
    [ "$got" = "$2 $3" ] || fail "$1 is $got, expected $2 $3"
    echo "ok $1 $got"
}
expect_stat /usr/bin/fieldgate root:root 755
expect_stat /etc/fieldgate root:root 755
expect_stat /etc/fieldgate/config.yaml root:fieldgate 640
expect_stat "$unit" root:root 644
expect_stat /var/lib/fieldgate fieldgate:fieldgate 750
getent passwd fieldgate | grep -q ':/var/lib/fieldgate:/usr/sbin/nologin$' || fail "user: $(getent passwd fieldgate)"
id -nG fieldgate | tr ' ' '\n' | grep -qx dialout || fail "fieldgate not in dialout"
id -nG fieldgate | tr ' ' '\n' | grep -qx bluetooth || fail "fieldgate not in bluetooth"
[ -L /etc/systemd/system/multi-user.target.wants/fieldgate.service ] || fail "service not enabled"
echo "ok enabled: $(readlink /etc/systemd/system/multi-user.target.wants/fieldgate.service)"
/usr/bin/fieldgate --version
# The test hooks (cargo feature fault-injection) never ship.
if grep -q FIELDGATE_FAULT_INJECTION /usr/bin/fieldgate; then
    fail "the packaged binary has the fault-injection test hooks"
fi
/usr/bin/fieldgate check -c /etc/fieldgate/config.yaml >/dev/null || fail "check on the installed config"
FIELDGATE_CONFIG=/etc/fieldgate/config.yaml /usr/bin/fieldgate check >/dev/null || fail "check via FIELDGATE_CONFIG"

step "systemd-analyze verify / security"
systemd-analyze verify "$unit"
systemd-analyze security --offline=true "$unit" | tail -1

step "upgrade over itself with an edited config"
"${sudo[@]}" sed -i 's/^  namespace: default$/  namespace: edited-by-admin/' /etc/fieldgate/config.yaml
grep -q 'namespace: edited-by-admin' /etc/fieldgate/config.yaml || fail "edit not applied"
"${sudo[@]}" dpkg -i --force-confold "$deb"
grep -q 'namespace: edited-by-admin' /etc/fieldgate/config.yaml || fail "the edit did not survive the upgrade"
[ ! -e /etc/fieldgate/config.yaml.dpkg-new ] || fail "config.yaml.dpkg-new left over"
expect_stat /etc/fieldgate/config.yaml root:fieldgate 640
report=$(/usr/bin/fieldgate check -c /etc/fieldgate/config.yaml)
grep -q 'namespace edited-by-admin' <<<"$report" || fail "check after upgrade"
echo "ok the edited config survived"

step "upgrade with a config the new version rejects: the running service is left alone"
# Systemd is not PID 1 here, so the old service is started by hand, as the
# unit would (user fieldgate). A stand-in systemctl / deb-systemd-invoke
# (first on PATH, with /run/systemd/system present for the upgrade only)
# records what the maintainer scripts ask of systemd.
version=$(field Version)
repack() { # version -> path of the same package with that version
    local dir out
    dir=$(mktemp -d)
    dpkg-deb -R "$deb" "$dir/pkg"
    sed -i "s/^Version: .*/Version: $1/" "$dir/pkg/DEBIAN/control"
    out="$dir/fieldgate_$1_amd64.deb"
    dpkg-deb --root-owner-group -b "$dir/pkg" "$out" >/dev/null
    echo "$out"
}
newer=$(repack "$version.1")
newest=$(repack "$version.2")
dpkg --compare-versions "$version.1" gt "$version" || fail "$version.1 is not newer than $version"
fake=$(mktemp -d)
for tool in systemctl deb-systemd-invoke; do
    printf '#!/bin/sh\necho "%s $*" >>%s/calls\n' "$tool" "$fake" >"$fake/$tool"
    chmod 755 "$fake/$tool"
done
made_run_systemd=
if [ ! -d /run/systemd/system ]; then
    "${sudo[@]}" mkdir -p /run/systemd/system
    made_run_systemd=1
fi
cat <<'YAML' | "${sudo[@]}" tee /etc/fieldgate/config.yaml >/dev/null
gateway:
  namespace: before-upgrade
  metrics: { listen: "" }
mqtt:
  client: { server: tcp://127.0.0.1:1 }
devices:
  - { name: fan, driver: dummy, model: fan, syncInterval: 1s }
YAML
service_log=$(mktemp)
chmod 644 "$service_log"
# setpriv execs the daemon (as root $! is its pid; under sudo, sudo's child).
"${sudo[@]}" setpriv --reuid fieldgate --regid fieldgate --init-groups \
    /usr/bin/fieldgate run -c /etc/fieldgate/config.yaml >"$service_log" 2>&1 &
service_pid=$!
stop_service() { "${sudo[@]}" kill "$service_pid" 2>/dev/null || true; }
trap 'stop_service; purge' EXIT
for _ in $(seq 100); do grep -q 'fieldgate starting' "$service_log" && break; sleep 0.1; done
grep -q 'fieldgate starting' "$service_log" || fail "the old service did not start: $(cat "$service_log")"
if [ "${#sudo[@]}" -gt 0 ]; then service_pid=$(pgrep -P "$service_pid" | head -1); fi
old_exe=$("${sudo[@]}" readlink "/proc/$service_pid/exe")
[ "$old_exe" = /usr/bin/fieldgate ] || fail "pid $service_pid is $old_exe, not the service"
# Broken while the service runs (it rejects the edit and keeps its config).
"${sudo[@]}" sed -i 's/driver: dummy/driver: no-such-driver/' /etc/fieldgate/config.yaml
for _ in $(seq 100); do grep -q 'config not reloaded' "$service_log" && break; sleep 0.1; done
grep -q 'config not reloaded' "$service_log" || fail "the old service did not reject the broken edit: $(cat "$service_log")"
rc=0
/usr/bin/fieldgate check -c /etc/fieldgate/config.yaml >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 78 ] || fail "the broken config gave exit $rc, expected 78"
: >"$fake/calls"
out=$("${sudo[@]}" env PATH="$fake:$PATH" dpkg -i --force-confold "$newer" 2>&1) || fail "dpkg -i: $out"
echo "$out"
[ "$(dpkg-query -W -f='${Version}' fieldgate)" = "$version.1" ] || fail "not upgraded to $version.1"
grep -q "is not valid for the new version" <<<"$out" || fail "no message about the config"
grep -q "no-such-driver" <<<"$out" || fail "the config's errors are not printed"
grep -q "NOT restarted" <<<"$out" || fail "no word that the service was not restarted"
if grep -Eq 'restart|stop' "$fake/calls"; then fail "the service was restarted: $(cat "$fake/calls")"; fi
"${sudo[@]}" kill -0 "$service_pid" 2>/dev/null || fail "the old service is gone: $(cat "$service_log")"
running_exe=$("${sudo[@]}" readlink "/proc/$service_pid/exe")
[ "$running_exe" = "$old_exe (deleted)" ] || fail "the running process is not the old binary: $running_exe"
echo "ok the old service (pid $service_pid) still runs the previous binary"
step "upgrade with the config fixed: the service is restarted"
"${sudo[@]}" sed -i 's/driver: no-such-driver/driver: dummy/' /etc/fieldgate/config.yaml
: >"$fake/calls"
out=$("${sudo[@]}" env PATH="$fake:$PATH" dpkg -i --force-confold "$newest" 2>&1) || fail "dpkg -i: $out"
echo "$out"
grep -q "is valid for the new version" <<<"$out" || fail "no word that the config is valid"
if grep -q "NOT restarted" <<<"$out"; then fail "not restarted with a valid config"; fi
grep -q 'restart fieldgate.service' "$fake/calls" || fail "no restart asked of systemd: $(cat "$fake/calls")"
echo "ok restart asked: $(grep restart "$fake/calls" | tr '\n' ' ')"
stop_service
wait "$service_pid" 2>/dev/null || true
trap purge EXIT
[ -z "$made_run_systemd" ] || "${sudo[@]}" rmdir /run/systemd/system 2>/dev/null || true
rm -rf "$fake" "$service_log" "$(dirname "$newer")" "$(dirname "$newest")"

step "remove"
"${sudo[@]}" touch /var/lib/fieldgate/outbox-state
"${sudo[@]}" dpkg --remove fieldgate
[ ! -e /usr/bin/fieldgate ] || fail "binary left after remove"
[ ! -e "$unit" ] || fail "unit left after remove"
[ ! -e /etc/systemd/system/multi-user.target.wants/fieldgate.service ] || fail "still enabled after remove"
[ -f /etc/fieldgate/config.yaml ] || fail "remove must keep the conffile"
[ -d /var/lib/fieldgate ] || fail "remove must keep the state"

step "purge"
"${sudo[@]}" dpkg --purge fieldgate
for p in /etc/fieldgate /var/lib/fieldgate /var/lib/private/fieldgate /usr/share/doc/fieldgate \
    /var/lib/systemd/deb-systemd-helper-enabled/fieldgate.service.dsh-also \
    /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/fieldgate.service; do
    [ ! -e "$p" ] || fail "$p left after purge"
done
! getent passwd fieldgate >/dev/null || fail "user fieldgate left after purge"
! getent group fieldgate >/dev/null || fail "group fieldgate left after purge"
! dpkg-query -W fieldgate >/dev/null 2>&1 || fail "dpkg still knows fieldgate"
trap - EXIT
echo "package-test: ok ($deb)"
