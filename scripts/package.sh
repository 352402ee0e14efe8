#!/bin/sh
# Builds what a release ships, into target/dist/:
#   agent-bootstrap_<version>-1_<arch>.deb        (cargo-deb)
#   agent-bootstrap-<version>-1.<arch>.rpm        (cargo-generate-rpm)
#   agent-bootstrap-<version>-<arch>-linux.tar.gz (binary, man pages, completions, README, LICENSE;
#                                                  what scripts/install.sh installs) and its .sha256
#   agent-bootstrap-<version>-x86_64-windows.zip  (agent-bootstrap.exe and the rest; what
#                                                  scripts/install.ps1 installs) and its .sha256
# The man pages and completions are generated from the clap definitions (examples/package-assets.rs),
# so they always match the flags. Needs cargo-deb and cargo-generate-rpm (`cargo install --locked
# cargo-deb cargo-generate-rpm`; .ci/run does it).
set -eu
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(uname -m)
dist=target/dist
assets=target/package-assets

cargo build --release --locked --bin agent-bootstrap
rm -rf "$assets" "$dist"
mkdir -p "$dist"
cargo run --quiet --locked --example package-assets -- "$assets"
gzip -9n "$assets"/man/*.1

cargo deb --no-build --no-strip --output "$dist/"
cargo generate-rpm --output "$dist/"

name="agent-bootstrap-$version"
stage="target/tarball/$name"
rm -rf target/tarball
mkdir -p "$stage"
cp target/release/agent-bootstrap README.md packaging/LICENSE "$stage/"
cp -r "$assets/man" "$assets/completions" "$stage/"
tarball="$dist/$name-$arch-linux.tar.gz"
# Reproducible: fixed owner, order and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C target/tarball -cf - "$name" \
    | gzip -9n >"$tarball"
(cd "$dist" && sha256sum "$(basename "$tarball")" >"$(basename "$tarball").sha256")

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
