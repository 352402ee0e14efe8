#!/bin/sh
# Installs what the static Linux release builds and their tests need, if it is missing: the Rust
# targets x86_64- and aarch64-unknown-linux-musl (rustup), and from Debian's packages musl-tools
# (musl-gcc: ring's C for x86_64), gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (ring's C and
# the link for aarch64; libc and the C runtime come from Rust's self-contained musl, see
# .cargo/config.toml),
# qemu-user-static (runs the aarch64 binary in tests/host.rs), debootstrap (the Debian 11 root,
# scripts/debian-root.sh) and file. Idempotent; run as root (apt-get).
set -eu
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need musl-gcc musl-tools
need aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
need qemu-aarch64-static qemu-user-static
need debootstrap debootstrap
need file file
need chroot coreutils
# The cross gcc's C headers (ring includes <stdint.h>): only a Recommends of the compiler, which
# --no-install-recommends leaves out; without it ring's build for aarch64 fails.
[ -e /usr/aarch64-linux-gnu/include/stdint.h ] || missing="$missing libc6-dev-arm64-cross"
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y -q --no-install-recommends $missing >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; }
fi
for target in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    # The standard library on disk, not rustup's list (which can miss a target installed by hand).
    [ -d "$(rustc --print sysroot)/lib/rustlib/$target/lib" ] || rustup target add "$target"
done
