#!/bin/sh
# Builds lease the way it is installed and prints the binary's path; lease-broker (which
# `lease serve` hands over to) is next to it.
#
# The two binaries are built apart, each for what it does. `lease` is a short run's cost: the
# release profile, optimized for size (a smaller binary is a smaller peak RSS), with the
# portable code below. `lease-broker` is a long-running server: the `broker` profile, lease's
# own code and the HTTP stack's generic code built in it at opt-level 3, and every crate's
# fastest code (docs/performance.md, sixteenth session).
#
# On Linux with glibc both are linked statically (crt-static): no dynamic loader, no
# libgcc_s/libc to map and relocate at every start, which is most of a short run's cost (see
# docs/performance.md). The target is named explicitly so that build scripts and proc macros
# stay dynamic, as they must.
set -eu
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cargo-env.sh
. ./scripts/cargo-env.sh
lease_cargo_env >&2

target=${CARGO_TARGET_DIR:-target}
case "$target" in
    /*) ;;
    *) target=$PWD/$target ;; # cargo reads a relative CARGO_TARGET_DIR from here, the repo's root
esac
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
    *-linux-gnu*)
        var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
        # getrandom finds glibc's getrandom() with dlsym, which a static binary cannot: without
        # the backend named it falls back to polling /dev/random and reading /dev/urandom (four
        # more system calls and a descriptor in every process).
        static="-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\""
        # For `lease` only: sha2's portable code hashes a token's few dozen bytes in well under
        # a microsecond, and httparse's reads a broker's short answer as fast; their SIMD code
        # first asks the CPU what it has (cpuid), which a virtual machine answers in ~9 us a
        # question, once per process: a cost for a run, nothing for a broker that asks once.
        env "$var=$static --cfg sha2_backend=\"soft\" --cfg httparse_disable_simd=\"1\"" \
            cargo build --release --locked --quiet --target "$host" --bin lease >&2
        env "$var=$static" \
            cargo build --profile broker --locked --quiet --target "$host" --bin lease-broker >&2
        built=$target/$host
        ;;
    *)
        cargo build --release --locked --quiet --bin lease >&2
        cargo build --profile broker --locked --quiet --bin lease-broker >&2
        built=$target
        ;;
esac
# Both in one directory, each replaced atomically (a broker may be running from it), the
# broker first: a `lease` that finds itself new finds its broker new too.
mkdir -p "$built/dist"
trap 'rm -f "$built/dist/.lease-broker.$$" "$built/dist/.lease.$$"' EXIT
for binary in broker/lease-broker release/lease; do
    name=${binary#*/}
    cp "$built/$binary" "$built/dist/.$name.$$"
    mv -f "$built/dist/.$name.$$" "$built/dist/$name"
done
echo "$built/dist/lease"
