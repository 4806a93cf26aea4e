#!/bin/sh
# Mutation testing of lease's security-critical modules: cargo-mutants breaks each function in
# the obvious ways and runs the whole suite (unit and integration tests) against every mutant;
# a mutant the suite does not notice is a guarantee nothing proves. Too slow for .ci/run on two
# cores (hours for every module): run it before each release and keep the figures in
# docs/security.md ("Mutation testing") current.
#
#   scripts/mutants.sh                  every security-critical module
#   scripts/mutants.sh token store      only these (src/token.rs, src/store/*.rs)
#
# JOBS (default 1) mutants are tested at once; TIMEOUT (seconds, default 900) caps each test
# run. TESTS, if set, replaces the whole suite by these `cargo test` arguments, to fit a module
# in a session, e.g. TESTS='--lib --test integration -- store:: races::' (a catch by part of the
# suite is a catch by the suite; each survivor must then be examined against all of it).
# Results are in mutants.out/ (caught.txt, missed.txt, timeout.txt, unviable.txt).
# Needs cargo-mutants: cargo install --locked cargo-mutants
set -eu
cd "$(dirname "$0")/.."
# shellcheck source=scripts/cargo-env.sh
. ./scripts/cargo-env.sh
lease_cargo_env
if ! cargo mutants --version >/dev/null 2>&1; then
    echo "$0: cargo-mutants is not installed: cargo install --locked cargo-mutants" >&2
    exit 2
fi
if [ "$#" -eq 0 ]; then
    set -- token store authorize record owner child signals
fi
for module in "$@"; do
    if [ -f "src/$module.rs" ]; then
        set -- "$@" --file "src/$module.rs"
    elif [ -d "src/$module" ]; then
        set -- "$@" --file "src/$module/*.rs"
    else
        echo "$0: no module src/$module.rs or src/$module/" >&2
        exit 2
    fi
    shift
done
# TESTS is split into words on purpose (a list of arguments), but not expanded as file names.
set -f
# shellcheck disable=SC2086
exec cargo mutants --jobs "${JOBS:-1}" --timeout "${TIMEOUT:-900}" "$@" -- --locked ${TESTS:-}
