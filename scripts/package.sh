#!/bin/sh
# Builds what a release ships, into target/dist/, for x86_64 and aarch64 Linux:
#   agent-bootstrap_<version>-1_{amd64,arm64}.deb          (cargo-deb)
#   agent-bootstrap-<version>-1.{x86_64,aarch64}.rpm       (cargo-generate-rpm)
#   agent-bootstrap-<version>-{x86_64,aarch64}-linux.tar.gz (binary, man pages, completions, README,
#                                                  LICENSE; what scripts/install.sh installs) and .sha256
#   agent-bootstrap-<version>-x86_64-windows.zip  (agent-bootstrap.exe and the rest; what
#                                                  scripts/install.ps1 installs) and its .sha256
# The Linux binaries are static (musl, no dynamic loader, no glibc: they run on every distribution
# the agent supports, Debian 11 and RHEL 8 included), built once each and reused by
# scripts/check-packaging.sh and scripts/check-static.sh. Which agent package a binary asks for is
# decided from the host at run time (src/host.rs), never from the build.
# The man pages and completions are generated from the clap definitions (examples/package-assets.rs),
# so they always match the flags. Needs cargo-deb and cargo-generate-rpm (`cargo install --locked
# cargo-deb cargo-generate-rpm`; scripts/packaging-setup.sh) and the musl targets and aarch64 C
# compiler (scripts/cross-setup.sh).
set -eu
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
dist=target/dist
assets=target/package-assets
triples="x86_64-unknown-linux-musl aarch64-unknown-linux-musl"

for triple in $triples; do
    [ -d "$(rustc --print sysroot)/lib/rustlib/$triple/lib" ] \
        || { echo "package.sh: the Rust target $triple is missing: run scripts/cross-setup.sh" >&2; exit 1; }
    cargo build --release --locked --target "$triple" --bin agent-bootstrap
done
rm -rf "$assets" "$dist"
mkdir -p "$dist"
cargo run --quiet --locked --example package-assets -- "$assets"
gzip -9n "$assets"/man/*.1

name="agent-bootstrap-$version"
for triple in $triples; do
    arch=${triple%%-*}
    # cargo-deb and cargo-generate-rpm read the assets' target/release/ from target/<triple>/release/.
    cargo deb --no-build --no-strip --target "$triple" --output "$dist/"
    cargo generate-rpm --target "$triple" --arch "$arch" --output "$dist/"

    stage="target/tarball/$arch/$name"
    rm -rf "target/tarball/$arch"
    mkdir -p "$stage"
    cp "target/$triple/release/agent-bootstrap" README.md packaging/LICENSE "$stage/"
    cp -r "$assets/man" "$assets/completions" "$stage/"
    tarball="$dist/$name-$arch-linux.tar.gz"
    # Reproducible: fixed owner, order and times.
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "target/tarball/$arch" -cf - "$name" \
        | gzip -9n >"$tarball"
    (cd "$dist" && sha256sum "$(basename "$tarball")" >"$(basename "$tarball").sha256")
done

# Windows (what scripts/install.ps1 installs), where the cross toolchain is set up
# (scripts/windows-setup.sh): agent-bootstrap.exe, README, LICENSE, the PowerShell completion.
if rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu \
    && command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
    cargo build --release --locked --target x86_64-pc-windows-gnu --bin agent-bootstrap
    zip="$dist/$name-x86_64-windows.zip"
    python3 - "$zip" <<'PY'
import sys, zipfile

entries = [
    ("target/x86_64-pc-windows-gnu/release/agent-bootstrap.exe", "agent-bootstrap.exe"),
    ("README.md", "README.md"),
    ("packaging/LICENSE", "LICENSE"),
    ("target/package-assets/completions/_agent-bootstrap.ps1", "agent-bootstrap.ps1"),
]
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for src, name in entries:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(src, "rb") as f:
            z.writestr(info, f.read())
PY
    (cd "$dist" && sha256sum "$(basename "$zip")" >"$(basename "$zip").sha256")
else
    echo "package.sh: no x86_64-pc-windows-gnu toolchain (scripts/windows-setup.sh): no Windows zip" >&2
fi

ls -l "$dist"
