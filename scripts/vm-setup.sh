#!/bin/sh
# Installs what the booted-VM test (scripts/vm-test.sh) needs, if it is missing: qemu-system-x86_64
# (without its recommended GUI and firmware extras), debootstrap, e2fsprogs (mkfs.ext4 -d) and
# binutils (strip). Idempotent; run as root (apt-get).
set -eu
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need qemu-system-x86_64 qemu-system-x86
need debootstrap debootstrap
need mkfs.ext4 e2fsprogs
need strip binutils
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y -q --no-install-recommends $missing >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; }
fi
