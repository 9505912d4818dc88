#!/usr/bin/env bash
# Packaging test (run by .ci/run after the test suite, as root on a Debian
# machine where systemd is not PID 1): builds the amd64 .deb, installs it with
# dpkg, checks files, owners and modes, validates the installed config,
# upgrades over itself with a locally edited config (the edit must survive),
# removes and purges it (nothing may be left behind), and verifies the unit.
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
    cargo build -p fieldgate --all-features
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
