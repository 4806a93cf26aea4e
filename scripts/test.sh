#!/bin/sh
# Runs lease's whole test suite: unit tests and the integration tests, which drive the real
# binary against real processes, signals, a pseudo-terminal, sh, make and python3.
set -eu
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cargo-env.sh
. ./scripts/cargo-env.sh
lease_cargo_env
exec cargo test --locked "$@"
