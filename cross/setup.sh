#!/usr/bin/env bash
# Installs the cross toolchain for fieldgate's ARM builds from Debian 12's own
# packages (no Docker, no rustup targets): rustc-web/cargo-web (Rust 1.96 as
# /usr/bin/rustc and /usr/bin/cargo), the target's std (libstd-rust-web-dev:<arch>),
# a gcc cross compiler and linker (also for the C parts: ring, jemalloc and
# libdbus, built from source), make, qemu-user-static (smoke tests) and cargo-deb.
#
#     sudo bash cross/setup.sh arm64          # or armhf, amd64, all
#
# armhf: when the security suite's armhf index cannot be downloaded (seen:
# "File has unexpected size"), the script falls back to building std from
# Debian's rust-web-src (cross/build.sh then uses -Zbuild-std); see cross/README.md.
#
# FIELDGATE_CROSS_BUILD_STD=1 skips the foreign architectures altogether: no
# `dpkg --add-architecture`, no foreign index in `apt-get update` (whose
# download failures would then break every other apt-get on the machine), std
# built from rust-web-src. Nothing but native packages is installed.
set -euo pipefail

build_std_only=${FIELDGATE_CROSS_BUILD_STD:-0}

arches=("$@")
[ "${#arches[@]}" -gt 0 ] || arches=(arm64)
if [ "${arches[0]}" = all ]; then arches=(amd64 arm64 armhf); fi

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=900 -y --no-install-recommends)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_missing() {
    local missing=() p
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "cross/setup.sh: installing ${missing[*]}" >&2
        "${apt[@]}" install "${missing[@]}" </dev/null
    fi
}

add_arch() {
    if ! dpkg --print-foreign-architectures | grep -qx "$1"; then
        "${sudo[@]}" dpkg --add-architecture "$1"
    fi
}

updated=0
update() {
    # `apt-get update` can fail on one foreign index while the others are fine;
    # report it and let the package installation decide.
    if [ "$updated" -eq 0 ]; then
        "${apt[@]}" update </dev/null || echo "cross/setup.sh: apt-get update reported errors (see above)" >&2
        updated=1
    fi
}

# A foreign std pulls Multi-Arch: same libraries (libxml2, libicu72, ...) that
# must have the same version for every architecture. When the host's copies
# are older than the foreign index's, install both at the foreign candidate
# version (a point-release upgrade of the host's copies).
align_multiarch() {
    local arch=$1 lib cand a pins=()
    shift
    for lib in "$@"; do
        cand=$(apt-cache policy "$lib:$arch" | awk '/Candidate:/ {print $2}')
        [ -n "$cand" ] && [ "$cand" != "(none)" ] || continue
        pins+=("$lib:$arch=$cand")
        # Every architecture already carrying the library moves to that version.
        for a in $(dpkg --print-architecture) $(dpkg --print-foreign-architectures); do
            [ "$a" != "$arch" ] || continue
            if installed "$lib:$a" && [ "$(dpkg-query -W -f='${Version}' "$lib:$a")" != "$cand" ]; then
                pins+=("$lib:$a=$cand")
            fi
        done
    done
    if [ "${#pins[@]}" -gt 0 ]; then
        echo "cross/setup.sh: aligning multiarch versions: ${pins[*]}" >&2
        "${apt[@]}" --allow-downgrades install "${pins[@]}" </dev/null
    fi
}

# The target's std must be the very version of rustc-web. The foreign index may
# lack it (seen: the security suite's armhf index failing to download, and its
# arm64 index without the 1.96 build, leaving only 1.85 from the main suite,
# which apt "solves" by removing rustc-web). Then install Debian's std source
# (rust-web-src) instead: cross/build.sh builds std with -Zbuild-std.
install_std() {
    local arch=$1 want have
    if [ "$build_std_only" = 1 ]; then
        echo "cross/setup.sh: FIELDGATE_CROSS_BUILD_STD=1: std for $arch from rust-web-src (-Zbuild-std)" >&2
        install_missing rust-web-src
        return 0
    fi
    want=$(apt-cache policy rustc-web | awk '/Candidate:/ {print $2}')
    have=$(apt-cache policy "libstd-rust-web-dev:$arch" | awk '/Candidate:/ {print $2}')
    if [ -n "$want" ] && [ "$want" = "$have" ]; then
        installed "libstd-rust-web-dev:$arch" || align_multiarch "$arch" libxml2 libicu72 "${multiarch_libs[@]}"
    fi
    if [ -n "$want" ] && [ "$want" = "$have" ] && install_missing "libstd-rust-web-dev:$arch"; then
        return 0
    fi
    echo "cross/setup.sh: libstd-rust-web-dev:$arch $have does not match rustc-web $want;" >&2
    echo "cross/setup.sh: using rust-web-src (std built with -Zbuild-std)" >&2
    install_missing rust-web-src
}

# A foreign std of another version blocks rustc-web (Multi-Arch: same).
remove_mismatched_std() {
    local arch=$1 want
    want=$(apt-cache policy rustc-web | awk '/Candidate:/ {print $2}')
    if installed "libstd-rust-web-dev:$arch" &&
        [ "$(dpkg-query -W -f='${Version}' "libstd-rust-web-dev:$arch")" != "$want" ]; then
        "${apt[@]}" purge "libstd-rust-web-dev:$arch" "libstd-rust-web-*:$arch" </dev/null
    fi
}

multiarch_libs=(libsystemd0 liblzma5 libzstd1 liblz4-1 libgcrypt20 libgpg-error0 libcap2)

common=(rustc-web cargo-web make qemu-user-static dpkg-dev binutils)
for arch in "${arches[@]}"; do
    case "$arch" in
        amd64) ;;
        arm64 | armhf) [ "$build_std_only" = 1 ] || add_arch "$arch" ;;
        *) echo "usage: $0 [amd64|arm64|armhf|all]..." >&2; exit 2 ;;
    esac
done
update
for arch in "${arches[@]}"; do
    [ "$arch" = amd64 ] || [ "$build_std_only" = 1 ] || remove_mismatched_std "$arch"
done
install_missing "${common[@]}"

for arch in "${arches[@]}"; do
    case "$arch" in
        amd64) ;;
        arm64)
            install_missing gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
            install_std arm64
            ;;
        armhf)
            install_missing gcc-arm-linux-gnueabihf libc6-dev-armhf-cross binutils-arm-linux-gnueabihf
            install_std armhf
            ;;
    esac
done

install_missing "${common[@]}"

# cargo-deb, built by the distribution cargo or rustup's, whichever is first.
if ! command -v cargo-deb >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" ]; then
    echo "cross/setup.sh: cargo install cargo-deb --locked" >&2
    cargo install cargo-deb --locked
fi
echo "cross/setup.sh: ok (${arches[*]})"
