#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter, the Pythons that get the newest
# TorchGeo (0.10+), building CPython 3.13 when the machine has none.
#
#   PYTHON=$(.ci/python-latest.sh)      # used by `make test-latest` and .ci/run
#
# Looks, in order, for: $PYTHON_LATEST; python3.14, python3.13, python3.12 on PATH;
# pyenv's 3.12+ versions; an earlier build of this script. Otherwise it builds
# CPython 3.13 from Debian's source package (Debian 12 ships only 3.11; the package
# index and Debian's archive are the only sources this needs) into the cache folder
# $TORCHGEO_MMEARTH_CACHE/python3.13 (default ~/.cache/torchgeo-mmearth), outside the
# work tree, so that later runs and other clones reuse it. Measured on 2 cores:
# about 5 minutes (269 s measured). An interrupted build is started again from scratch on the next run.
# Progress goes to stderr; stdout is the interpreter's path alone.
set -euo pipefail

log() { echo "python-latest: $*" >&2; }

# An interpreter counts when it runs, is 3.12+, and has the standard modules that
# pip, torch and the test suite need (pyenv shims of absent versions do not run).
usable() {
    "$1" -c 'import sys, ssl, sqlite3, lzma, bz2, ctypes, zlib; sys.exit(sys.version_info < (3, 12))' \
        >/dev/null 2>&1
}

CACHE=${TORCHGEO_MMEARTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/torchgeo-mmearth}
PREFIX=$CACHE/python3.13
BUILT=$PREFIX/bin/python3.13

candidates=()
[ -n "${PYTHON_LATEST:-}" ] && candidates+=("$PYTHON_LATEST")
if [ -z "${TORCHGEO_MMEARTH_BUILD_PYTHON:-}" ]; then
    for version in 3.14 3.13 3.12; do
        found=$(command -v "python$version" || true)
        [ -n "$found" ] && candidates+=("$found")
        for found in "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".*/bin/"python$version"; do
            [ -x "$found" ] && candidates+=("$found")
        done
    done
fi
# The build only counts once complete (the marker is written last).
[ -f "$PREFIX/.complete" ] && candidates+=("$BUILT")
for candidate in "${candidates[@]}"; do
    if usable "$candidate"; then
        log "using $candidate ($("$candidate" --version 2>&1))"
        echo "$candidate"
        exit 0
    fi
done

log "no Python >= 3.12 found: building CPython 3.13 into $PREFIX (about 5 minutes on 2 cores)"
start=$(date +%s)
rm -rf "$PREFIX"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq build-essential libssl-dev zlib1g-dev libffi-dev libbz2-dev \
    liblzma-dev libsqlite3-dev libreadline-dev uuid-dev xz-utils >/dev/null
# Debian 13's source package of python3.13, from the machine's own Debian mirror,
# through a private apt configuration that leaves the system's sources untouched.
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
    || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/parts"
printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
    "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg >"$work/parts/trixie.sources"
apt_private=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$work/parts"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
apt-get "${apt_private[@]}" update -qq >/dev/null
(cd "$work" && apt-get "${apt_private[@]}" source --download-only -qq python3.13 >/dev/null 2>&1)
tar -xf "$work"/python3.13_*.orig.tar.xz -C "$work"
cd "$work"/Python-3.13*/
./configure --prefix="$PREFIX" --with-ensurepip=install >"$work/configure.log" 2>&1
make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -30 "$work/make.log" >&2; exit 1; }
make altinstall >"$work/install.log" 2>&1 || { tail -30 "$work/install.log" >&2; exit 1; }
usable "$BUILT" || { log "the build at $BUILT lacks a standard module"; exit 1; }
touch "$PREFIX/.complete"
log "built $("$BUILT" --version 2>&1) in $(($(date +%s) - start)) s"
echo "$BUILT"
