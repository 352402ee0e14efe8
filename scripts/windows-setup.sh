#!/bin/sh
# Installs what building and testing the Windows binary here needs, if it is missing: Rust's
# x86_64-pc-windows-gnu target, the mingw-w64 C compiler (linker, and ring's C code), and Wine
# (the tests' runner, see scripts/wine-run). Idempotent; run as root (apt-get).
set -eu
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu; then
    rustup target add x86_64-pc-windows-gnu
fi
missing=""
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || missing="$missing gcc-mingw-w64-x86-64"
command -v wine >/dev/null 2>&1 || missing="$missing wine wine64"
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y -q --no-install-recommends $missing >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; }
fi
