#!/usr/bin/env bash
# Makes (once) the Home Assistant Core venv the Home Assistant end-to-end test
# runs, outside the checkout, and prints the path of its `hass` on the last line.
#
#     bash gateway/tests/e2e/homeassistant/venv.sh     # → /var/cache/fieldgate-test/homeassistant/venv/bin/hass
#
# Home Assistant Core is installed under its own package_constraints.txt
# (shipped inside the package: a plain install pulls newer, incompatible
# dependencies), with the requirements of the integrations the test loads
# pre-installed, so that `hass --skip-pip` never downloads at run time.
# A finished install leaves a stamp; later runs only check it.
set -euo pipefail

HA_VERSION="${FIELDGATE_HA_VERSION:-2025.4.4}"
CACHE="${FIELDGATE_HA_CACHE:-/var/cache/fieldgate-test/homeassistant}"
VENV="$CACHE/venv"
STAMP="$CACHE/installed-$HA_VERSION"
# Integrations the test loads besides those Home Assistant's bootstrap loads
# by default (read from homeassistant.bootstrap); their manifests'
# requirements, and those of their dependencies, are pre-installed.
EXTRA_INTEGRATIONS=(mqtt onboarding auth http api config websocket_api search)

if [ -f "$STAMP" ] && [ -x "$VENV/bin/hass" ]; then
    echo "$VENV/bin/hass"
    exit 0
fi

python=""
for candidate in "${FIELDGATE_HA_PYTHON:-}" "$HOME"/.pyenv/versions/3.13*/bin/python3 \
        "$(command -v python3.13 || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "homeassistant venv: no Python 3.13 found (pyenv's ~/.pyenv/versions/3.13*, or python3.13 on PATH);" >&2
    echo "Home Assistant Core $HA_VERSION needs it" >&2
    exit 1
fi

echo "homeassistant venv: installing Home Assistant Core $HA_VERSION into $VENV with $python (about 2 minutes, ~850 MB)" >&2
started=$(date +%s)
mkdir -p "$CACHE"
rm -rf "$VENV" "$CACHE"/installed-*
"$python" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
"${pip[@]}" install --upgrade pip >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${pip[@]}" download --no-deps -d "$work" "homeassistant==$HA_VERSION" >&2
wheel=$(ls "$work"/homeassistant-*.whl)
"$VENV/bin/python" - "$wheel" "$work/constraints.txt" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    open(sys.argv[2], "wb").write(z.read("homeassistant/package_constraints.txt"))
PY
"${pip[@]}" install -c "$work/constraints.txt" "$wheel" >&2

# Requirements of the integrations the test loads, with their dependencies.
"$VENV/bin/python" - "$work/requirements.txt" "${EXTRA_INTEGRATIONS[@]}" <<'PY'
import json, pathlib, sys
import homeassistant.bootstrap as bootstrap
import homeassistant.components as components
root = pathlib.Path(components.__file__).parent
todo = set(sys.argv[2:]) | bootstrap.CORE_INTEGRATIONS | bootstrap.DEFAULT_INTEGRATIONS
todo |= bootstrap.LOGGING_AND_HTTP_DEPS_INTEGRATIONS | bootstrap.FRONTEND_INTEGRATIONS | {"recorder"}
todo, seen, reqs = list(todo), set(), set()
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    manifest = root / name / "manifest.json"
    if not manifest.exists():
        continue
    m = json.loads(manifest.read_text())
    reqs.update(m.get("requirements", []))
    todo.extend(m.get("dependencies", []))
    todo.extend(m.get("after_dependencies", []))
pathlib.Path(sys.argv[1]).write_text("\n".join(sorted(reqs)) + "\n")
print(f"homeassistant venv: {len(reqs)} integration requirements from {len(seen)} integrations", file=sys.stderr)
PY
"${pip[@]}" install -c "$work/constraints.txt" -r "$work/requirements.txt" >&2

touch "$STAMP"
echo "homeassistant venv: installed in $(( $(date +%s) - started )) s ($(du -sh "$VENV" | cut -f1))" >&2
echo "$VENV/bin/hass"
