#!/usr/bin/env bash
# Proves that building fieldgate needs nothing but Rust, a C compiler and make
# (issue #19, "a bare machine"): no pkg-config, no system -dev package.
#
#     bash .ci/check-no-system-libs.sh [extra cargo build args]
#
# 1. Builds the workspace with every feature and `PKG_CONFIG=/bin/false`: a
#    build script that asks pkg-config for a system library (as libdbus-sys
#    does without `vendored`) gets an error and fails the build.
# 2. Reads what every build script told cargo to link (`--message-format=json`
#    replays it for build scripts that did not rerun, so a warm target dir is
#    checked as well as a cold one): only static libraries built into the
#    target directory, and from the C library's own family, may appear.
# 3. Checks the binaries' dynamic dependencies (`ldd`): the C library's family
#    only (libc, libm, libgcc_s, the loader), so the .deb needs no libdbus-1-3.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    echo "check-no-system-libs: FAIL: $*" >&2
    exit 1
}

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || fail "cannot find cargo's target directory"
json=$(mktemp)
trap 'rm -f "$json"' EXIT

echo "check-no-system-libs: PKG_CONFIG=/bin/false cargo build --workspace --all-features $*" >&2
PKG_CONFIG=/bin/false PKG_CONFIG_PATH=/nonexistent PKG_CONFIG_LIBDIR=/nonexistent \
    cargo build --locked --workspace --all-features --message-format=json-render-diagnostics "$@" >"$json" ||
    fail "the build failed with PKG_CONFIG=/bin/false: a build script needs pkg-config or a system library (see above)"

# Libraries the C runtime itself provides; everything else must be static=.
runtime='^(dylib=)?(c|m|pthread|dl|rt|util|gcc_s)$'
bad_libs=()
bad_paths=()
scripts=0
while IFS= read -r line; do
    scripts=$((scripts + 1))
    libs=$(grep -o '"linked_libs":\[[^]]*\]' <<<"$line" | sed 's/^"linked_libs":\[//; s/\]$//' | tr ',' '\n' | tr -d '"')
    while IFS= read -r lib; do
        [ -n "$lib" ] || continue
        case "$lib" in
            static=*) ;;
            *) grep -Eq "$runtime" <<<"$lib" || bad_libs+=("$lib") ;;
        esac
    done <<<"$libs"
    paths=$(grep -o '"linked_paths":\[[^]]*\]' <<<"$line" | sed 's/^"linked_paths":\[//; s/\]$//' | tr ',' '\n' | tr -d '"')
    while IFS= read -r path; do
        [ -n "$path" ] || continue
        dir=${path#*=}
        case "$dir" in
            "$target_dir"/*) ;;
            *) bad_paths+=("$path") ;;
        esac
    done <<<"$paths"
done < <(grep '"reason":"build-script-executed"' "$json")
[ "$scripts" -gt 0 ] || fail "cargo reported no build scripts (unexpected --message-format output)"
[ "${#bad_libs[@]}" -eq 0 ] || fail "build scripts link system libraries: ${bad_libs[*]}"
[ "${#bad_paths[@]}" -eq 0 ] || fail "build scripts add link paths outside $target_dir: ${bad_paths[*]}"

# The executables cargo built (fieldgate, fieldgate-bench, …).
mapfile -t exes < <(grep '"reason":"compiler-artifact"' "$json" | grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//' | sort -u)
[ "${#exes[@]}" -gt 0 ] || fail "cargo built no executable"
for exe in "${exes[@]}"; do
    deps=$(ldd "$exe" | awk '{print $1}')
    while IFS= read -r dep; do
        case "$dep" in
            linux-vdso.so.* | linux-gate.so.* | /lib*/ld-linux*.so.* | ld-linux*.so.*) ;;
            libc.so.* | libm.so.* | libgcc_s.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libutil.so.*) ;;
            *) fail "$exe links $dep at run time (only the C library's family is allowed)" ;;
        esac
    done <<<"$deps"
    echo "check-no-system-libs: $exe: $(tr '\n' ' ' <<<"$deps")" >&2
done
echo "check-no-system-libs: ok ($scripts build scripts, ${#exes[@]} executables; all C parts static, no pkg-config)" >&2
