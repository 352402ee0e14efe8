#!/bin/sh
# Prints the path of a minimal Debian root (debootstrap --variant=minbase) for the static-binary
# tests, building it first when it is missing. The root is cached outside the clone (CI runs in a
# fresh clone), under ${AGENT_BOOTSTRAP_ROOT_CACHE:-/var/cache/agent-bootstrap-tests}, in a
# directory named by a hash of its inputs (suite, variant, architecture, mirror, this script), so
# a rerun on the same machine reuses it and a change of inputs builds a new one.
#
#   scripts/debian-root.sh [SUITE]     (default: bullseye, Debian 11, glibc 2.31)
#
# Needs debootstrap (scripts/cross-setup.sh installs it) and root. Messages go to stderr; stdout
# is the path alone.
set -eu
suite=${1:-bullseye}
mirror=${AGENT_BOOTSTRAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
variant=minbase
arch=amd64
cache=${AGENT_BOOTSTRAP_ROOT_CACHE:-/var/cache/agent-bootstrap-tests}
key=$( { printf '%s\n' "$suite" "$variant" "$arch" "$mirror"; cat "$0"; } | sha256sum | cut -c1-16)
root="$cache/debian-$suite-$arch-$key"
if [ -f "$root/.complete" ]; then
    printf '%s\n' "$root"
    exit 0
fi
command -v debootstrap >/dev/null 2>&1 || { echo "debian-root.sh: debootstrap is not installed" >&2; exit 1; }
mkdir -p "$cache"
tmp="$root.partial.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "debian-root.sh: building $suite ($variant, $arch) into $root" >&2
debootstrap --variant="$variant" --arch="$arch" "$suite" "$tmp" "$mirror" >"$cache/debootstrap-$suite.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap-$suite.log" >&2; exit 1; }
touch "$tmp/.complete"
rm -rf "$root"
mv "$tmp" "$root"
trap - EXIT
printf '%s\n' "$root"
