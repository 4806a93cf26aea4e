#!/bin/sh
# Builds lease in release mode (scripts/build-release.sh: a static binary on Linux with glibc)
# and installs it as ${PREFIX:-$HOME/.local}/bin/lease, with its shell completions (bash, zsh,
# fish) and man pages under ${PREFIX:-$HOME/.local}/share, where the shells and man look.
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
# lease, and lease-broker next to it (`lease serve` hands over to it), each replaced atomically.
for name in lease-broker lease; do
    tmp="$bindir/.$name.install.$$"
    trap 'rm -f "$tmp"' EXIT
    cp "$(dirname "$built")/$name" "$tmp"
    chmod 0755 "$tmp"
    mv -f "$tmp" "$bindir/$name"
    trap - EXIT
done

share=$prefix/share
install_generated() { # install_generated FILE COMMAND...: writes COMMAND's output to FILE
    file=$1
    shift
    mkdir -p "$(dirname "$file")"
    "$@" >"$file.tmp.$$"
    mv -f "$file.tmp.$$" "$file"
}
install_generated "$share/bash-completion/completions/lease" "$bindir/lease" completions bash
install_generated "$share/zsh/site-functions/_lease" "$bindir/lease" completions zsh
install_generated "$share/fish/vendor_completions.d/lease.fish" "$bindir/lease" completions fish
"$bindir/lease" man --dir "$share/man/man1" # lease.1 and a page per subcommand, lease-run.1 ...

echo "installed $("$bindir/lease" --version) to $bindir/lease (and $bindir/lease-broker, for lease serve)"
echo "installed completions for bash, zsh and fish, and the man pages, under $share"
case ":$PATH:" in
    *":$bindir:"*) ;;
    *) echo "$bindir is not on your PATH; add it with: export PATH=\"$bindir:\$PATH\"" ;;
esac
