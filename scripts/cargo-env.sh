# shellcheck shell=sh
# Sourced by install.sh and scripts/test.sh: makes `cargo` usable even when HOME is not the
# home rustup was installed under (a fresh HOME, a CI user, sudo). rustup keeps toolchains in
# $RUSTUP_HOME (default ~/.rustup); when that is missing but cargo's own directory sits next to
# one, use it, and the matching CARGO_HOME, so the registry cache is reused too.

lease_cargo_env() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "$0: cargo is not installed: install Rust with rustup (see rust-lang.org/tools/install), then run $0 again" >&2
        return 1
    fi
    if [ -z "${PROTOC:-}" ] && ! command -v protoc >/dev/null 2>&1; then
        echo "$0: protoc is not installed: the broker's etcd client is generated from etcd's protocol files when lease is built: install it (apt-get install protobuf-compiler, or brew install protobuf), then run $0 again" >&2
        return 1
    fi
    if cargo --version >/dev/null 2>&1; then
        return 0
    fi
    cargo_bin=$(dirname "$(command -v cargo)")
    cargo_home=$(dirname "$cargo_bin")
    rustup_home="$(dirname "$cargo_home")/.rustup"
    if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$rustup_home" ]; then
        RUSTUP_HOME=$rustup_home
        CARGO_HOME=${CARGO_HOME:-$cargo_home}
        export RUSTUP_HOME CARGO_HOME
    fi
    if ! cargo --version >/dev/null 2>&1; then
        echo "$0: cargo is installed but cannot run: $(cargo --version 2>&1 | head -n 1)" >&2
        return 1
    fi
}
