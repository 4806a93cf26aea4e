#!/bin/sh
# Builds lease the way it is installed and prints the binary's path.
#
# On Linux with glibc the binary is linked statically (crt-static): no dynamic loader, no
# libgcc_s/libc to map and relocate at every start, which is most of a short run's cost (see
# docs/performance.md). The target is named explicitly so that build scripts and proc macros
# stay dynamic, as they must.
set -eu
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cargo-env.sh
. ./scripts/cargo-env.sh
lease_cargo_env >&2

host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
    *-linux-gnu*)
        var="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
        # getrandom finds glibc's getrandom() with dlsym, which a static binary cannot: without
        # this it falls back to polling /dev/random and reading /dev/urandom (four more system
        # calls and a descriptor in every run). sha2's portable code hashes a token's few dozen
        # bytes in well under a microsecond, and httparse's reads a broker's short answer as
        # fast; their SIMD code first asks the CPU what it has (cpuid), which a virtual machine
        # answers in ~9 us a question, once per process (docs/performance.md).
        env "$var=-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\" --cfg sha2_backend=\"soft\" --cfg httparse_disable_simd=\"1\"" \
            cargo build --release --locked --quiet --target "$host" >&2
        echo "${CARGO_TARGET_DIR:-$PWD/target}/$host/release/lease"
        ;;
    *)
        cargo build --release --locked --quiet >&2
        echo "${CARGO_TARGET_DIR:-$PWD/target}/release/lease"
        ;;
esac
