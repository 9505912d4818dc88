#!/usr/bin/env bash
# Builds fieldgate's release binary and its .deb for one Debian architecture:
#
#     bash cross/build.sh amd64|arm64|armhf [extra cargo build args...]
#     bash cross/build.sh arm64 --no-default-features     # smallest build
#
# amd64 uses the cargo first in PATH and target/. arm64 and armhf use Debian's
# rustc-web (/usr/bin/cargo, /usr/bin/rustc; install with cross/setup.sh) and
# their own target directory target/cross-<arch>, so the two toolchains never
# invalidate each other's artifacts. Outputs:
#     target/.../<triple>/release/fieldgate   (stripped by the release profile)
#     dist/fieldgate_<version>_<arch>.deb
# Set FIELDGATE_NO_DEB=1 to build only the binary.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
arch=${1:-}
[ -n "$arch" ] || { echo "usage: $0 amd64|arm64|armhf [cargo args...]" >&2; exit 2; }
shift

cargo=(cargo)
build_std=()
case "$arch" in
    amd64)
        target=x86_64-unknown-linux-gnu
        export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
        ;;
    arm64)
        target=aarch64-unknown-linux-gnu
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
        # jemalloc's 64 KiB page size for arm64 comes from .cargo/config.toml
        # ([env]), for every arm64 build, not only this script's.
        ;;
    armhf)
        target=armv7-unknown-linux-gnueabihf
        export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc
        ;;
    *) echo "unknown architecture $arch (amd64, arm64, armhf)" >&2; exit 2 ;;
esac
# Every C part (ring, jemalloc, libdbus) is built from source by its crate:
# no build script may look for a system library (see .ci/check-no-system-libs.sh).
export PKG_CONFIG=/bin/false
if [ "$arch" != amd64 ]; then
    # Debian's toolchain, not rustup's proxies in ~/.cargo/bin.
    cargo=(/usr/bin/cargo)
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/cross-$arch}
    [ -x /usr/bin/cargo ] || { echo "/usr/bin/cargo missing: run cross/setup.sh $arch" >&2; exit 1; }
    # Without a packaged std of rustc-web's exact version for this target
    # (see cross/setup.sh), build std from Debian's rust-web-src.
    rustc_v=$(dpkg-query -W -f='${Version}' rustc-web 2>/dev/null || true)
    std_v=$(dpkg-query -W -f='${Version}' "libstd-rust-web-dev:$arch" 2>/dev/null || true)
    if [ "$rustc_v" != "$std_v" ]; then
        export RUSTC_BOOTSTRAP=1
        build_std=(-Zbuild-std=std,panic_abort)
    fi
fi

echo "==> ${cargo[*]} build --release --target $target ${build_std[*]} $*" >&2
"${cargo[@]}" build --locked --release -p fieldgate --target "$target" "${build_std[@]}" "$@"
bin=$CARGO_TARGET_DIR/$target/release/fieldgate
ls -l "$bin"

if [ "${FIELDGATE_NO_DEB:-0}" = 1 ]; then
    exit 0
fi
cargo_deb=$(command -v cargo-deb || echo "${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb")
[ -x "$cargo_deb" ] || { echo "cargo-deb missing: run cross/setup.sh (cargo install cargo-deb --locked)" >&2; exit 1; }
mkdir -p dist
# The binary is built above (with the features asked for); cargo-deb packages it.
"$cargo_deb" deb --no-build -p fieldgate --target "$target" --output dist/
ls -l dist/*_"$arch".deb
