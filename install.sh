#!/bin/sh
# Builds lease in release mode (scripts/build-release.sh: a static binary on Linux with glibc)
# and installs it as ${PREFIX:-$HOME/.local}/bin/lease.
# Safe to run again: the binary is replaced atomically, even while an old one is running.
set -eu

cd "$(dirname "$0")"
# shellcheck source=scripts/cargo-env.sh
. ./scripts/cargo-env.sh
lease_cargo_env

prefix=${PREFIX:-$HOME/.local}
bindir=$prefix/bin

built=$(scripts/build-release.sh)
mkdir -p "$bindir"
tmp="$bindir/.lease.install.$$"
trap 'rm -f "$tmp"' EXIT
cp "$built" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$bindir/lease"
trap - EXIT

echo "installed $("$bindir/lease" --version) to $bindir/lease"
case ":$PATH:" in
    *":$bindir:"*) ;;
    *) echo "$bindir is not on your PATH; add it with: export PATH=\"$bindir:\$PATH\"" ;;
esac
