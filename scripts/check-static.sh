#!/bin/sh
# The static release binaries on real systems (tests/host.rs, required here instead of skipped):
# the x86_64 binary runs `--version` and a dry-run install against the simulator inside a Debian 11
# root (debootstrap, cached outside the clone: scripts/debian-root.sh) and inside an empty root
# holding only the binary, and installs on this Debian machine with a musl loader in /lib asking
# for linux-x64; the aarch64 binary runs install → status → reconcile → remove under qemu-user and
# asks for linux-arm64. Builds the binaries only if scripts/package.sh has not (cargo reuses them).
# Needs root and what scripts/cross-setup.sh installs.
set -eu
cd "$(dirname "$0")/.."
for triple in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    cargo build --release --locked --target "$triple" --bin agent-bootstrap
done
AGENT_BOOTSTRAP_STATIC_TESTS=1 cargo test --locked --test host
