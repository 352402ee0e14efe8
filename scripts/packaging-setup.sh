#!/bin/sh
# Installs what scripts/package.sh and scripts/check-packaging.sh need, if it is missing:
# cargo-deb and cargo-generate-rpm (crates.io), and from Debian's packages lintian, rpmlint (with
# rpm), shellcheck, cloud-init (its schema check), man-db, bash-completion, systemd
# (systemd-analyze), dash and curl. Idempotent; run as root (apt-get).
set -eu
missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need lintian lintian
need rpmlint rpmlint
need rpm rpm
need shellcheck shellcheck
need cloud-init cloud-init
need man man-db
need systemd-analyze systemd
need dash dash
need curl curl
[ -f /usr/share/bash-completion/bash_completion ] || missing="$missing bash-completion"
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y -q --no-install-recommends $missing >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; }
fi
for tool in cargo-deb cargo-generate-rpm; do
    if ! cargo "${tool#cargo-}" --version >/dev/null 2>&1; then
        cargo install --locked --quiet "$tool"
    fi
done
