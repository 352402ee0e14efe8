#!/bin/sh
# Installs agent-bootstrap and registers this machine as an Azure Pipelines agent: for VM
# custom-script extensions, cloud-init and image builds (POSIX sh: runs under dash and busybox).
#
#   install.sh --release URL|FILE --sha256 HEX [--bin-dir DIR] [--] INSTALL-ARGS...
#
#   --release   the agent-bootstrap release: the .tar.gz (as scripts/package.sh makes it) or the
#               bare binary; an https URL (plain http only to this machine) or a local file.
#               `{arch}` in it becomes this machine's architecture as the release files name it,
#               from `uname -m`: x86_64 or aarch64 (one URL for a mixed fleet)
#   --sha256    its SHA-256, 64 hex digits; a mismatch installs nothing (exit 5). Give it once per
#               architecture as ARCH=HEX (x86_64=…, aarch64=…): the one for this machine is used
#   --bin-dir   where to put the binary [default: /usr/local/bin]; it must be a directory only
#               root can change (the boot unit runs the binary from there as root)
#
# Everything else goes to `agent-bootstrap install` unchanged, and this script exits with its exit
# code (README, "Exit codes"). Example:
#
#   curl -fsSLO https://example.blob.core.windows.net/tools/install.sh
#   sh install.sh --release https://example.blob.core.windows.net/tools/agent-bootstrap-0.1.0-{arch}-linux.tar.gz \
#       --sha256 x86_64=0123…cdef --sha256 aarch64=4567…89ab -- --org myorg --pool Default --log-format json
#
# No secret is involved: agent-bootstrap gets its token from the machine's identity at run time.
# Messages go to stderr; stdout carries only what agent-bootstrap prints.
set -eu

EXIT_USAGE=2
EXIT_PACKAGE=5

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() {
    code=$1
    shift
    say "error: $*"
    exit "$code"
}

release=""
sha256s=""
bin_dir=/usr/local/bin
while [ $# -gt 0 ]; do
    case $1 in
        --release)
            [ $# -ge 2 ] || die $EXIT_USAGE "--release needs a value"
            release=$2
            shift 2
            ;;
        --sha256)
            [ $# -ge 2 ] || die $EXIT_USAGE "--sha256 needs a value"
            sha256s="$sha256s $2"
            shift 2
            ;;
        --bin-dir)
            [ $# -ge 2 ] || die $EXIT_USAGE "--bin-dir needs a value"
            bin_dir=$2
            shift 2
            ;;
        --)
            shift
            break
            ;;
        *) break ;;
    esac
done

[ -n "$release" ] || die $EXIT_USAGE "--release is required: the agent-bootstrap release (https URL or file)"
[ -n "$sha256s" ] || die $EXIT_USAGE "--sha256 is required: the SHA-256 of the release"

# This machine's architecture as the release files name it (the kernel's, `uname -m`).
machine=$(uname -m)
case $machine in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) arch="" ;;
esac
case $release in
    *"{arch}"*)
        [ -n "$arch" ] || die $EXIT_USAGE "no agent-bootstrap build for this machine's architecture '$machine' (x86_64 and aarch64 are built)"
        release=$(printf '%s' "$release" | sed "s/{arch}/$arch/g")
        ;;
esac
sha256=""
for entry in $sha256s; do
    case $entry in
        *=*) [ "${entry%%=*}" = "$arch" ] && sha256=${entry#*=} ;;
        *) sha256=$entry ;;
    esac
done
[ -n "$sha256" ] || die $EXIT_USAGE "no --sha256 for this machine's architecture '${arch:-$machine}' (give --sha256 ${arch:-$machine}=HEX)"
sha256=$(printf '%s' "$sha256" | tr 'A-F' 'a-f')
case $sha256 in
    *[!0-9a-f]*) die $EXIT_USAGE "invalid --sha256 '$sha256': expected 64 hexadecimal digits" ;;
esac
[ ${#sha256} -eq 64 ] || die $EXIT_USAGE "invalid --sha256 '$sha256': expected 64 hexadecimal digits"
case $bin_dir in
    /*) ;;
    *) die $EXIT_USAGE "invalid --bin-dir '$bin_dir': must be an absolute path" ;;
esac
[ -d "$bin_dir" ] || die $EXIT_USAGE "invalid --bin-dir '$bin_dir': not a directory"
[ -w "$bin_dir" ] || die $EXIT_USAGE "cannot write to $bin_dir: run as root (or pass --bin-dir)"

# Never print a URL's query: a SAS token is a secret.
shown=${release%%\?*}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/agent-bootstrap-install.XXXXXX")
staged=""
trap 'rm -rf "$tmp" ${staged:+"$staged"}' EXIT
download="$tmp/release"

case $release in
    https://*) ;;
    http://127.*|http://localhost:*|http://localhost/*|http://\[::1\]*) ;;
    http://*) die $EXIT_USAGE "invalid --release $shown: plain http is refused except to this machine; use https" ;;
esac
case $release in
    http://*|https://*)
        say "downloading $shown"
        if command -v curl >/dev/null 2>&1; then
            curl -fsSL --retry 5 --retry-delay 2 --retry-connrefused --connect-timeout 10 \
                -o "$download" "$release" || die $EXIT_PACKAGE "downloading $shown failed"
        elif command -v wget >/dev/null 2>&1; then
            wget -q --tries=5 --timeout=30 -O "$download" "$release" \
                || die $EXIT_PACKAGE "downloading $shown failed"
        else
            die $EXIT_USAGE "neither curl nor wget is installed"
        fi
        ;;
    *)
        [ -f "$release" ] || die $EXIT_USAGE "invalid --release '$release': neither an https URL nor a file"
        cp "$release" "$download"
        ;;
esac

# The digest, before anything from the release is used.
if command -v sha256sum >/dev/null 2>&1; then
    actual=$(sha256sum "$download" | cut -d' ' -f1)
elif command -v shasum >/dev/null 2>&1; then
    actual=$(shasum -a 256 "$download" | cut -d' ' -f1)
else
    die $EXIT_USAGE "neither sha256sum nor shasum is installed"
fi
[ "$actual" = "$sha256" ] || die $EXIT_PACKAGE "$shown has SHA-256 $actual, expected $sha256; nothing installed"
say "verified $shown (SHA-256 $actual)"

# A .tar.gz (gzip's magic bytes) holds the binary; anything else is the binary itself.
magic=$(dd if="$download" bs=2 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
if [ "$magic" = "1f8b" ]; then
    mkdir "$tmp/unpacked"
    tar -xzf "$download" -C "$tmp/unpacked" || die $EXIT_PACKAGE "extracting $shown failed"
    found=$(find "$tmp/unpacked" -type f -name agent-bootstrap)
    count=$(printf '%s\n' "$found" | grep -c . || true)
    [ "$count" -eq 1 ] || die $EXIT_PACKAGE "$shown holds $count files named agent-bootstrap; expected one"
    binary=$found
else
    binary=$download
fi

# Into place by rename (a running copy, a boot-time reconcile, keeps its old file).
target="$bin_dir/agent-bootstrap"
staged="$bin_dir/.agent-bootstrap.new.$$"
cp "$binary" "$staged"
chmod 0755 "$staged"
if [ "$(id -u)" -eq 0 ]; then
    chown 0:0 "$staged"
fi
"$staged" --version >/dev/null 2>&1 \
    || die $EXIT_PACKAGE "the binary in $shown does not run on this machine (wrong architecture?)"
mv -f "$staged" "$target"
staged=""
say "installed $target"

rm -rf "$tmp"
trap - EXIT
exec "$target" install "$@"
