#!/bin/sh
# Starts N copies of a command at once and waits for all of them: what `make -j`, a CI matrix or
# an agent swarm does. Used by scripts/bench.sh to time lease and tini under the same load.
#   scripts/bench-fanout.sh N CMD [ARG...]
set -eu
n=$1
shift
i=0
while [ "$i" -lt "$n" ]; do
    "$@" &
    i=$((i + 1))
done
wait
