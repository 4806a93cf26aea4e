#!/usr/bin/env python3
"""A tool an agent calls, which runs an action only if the agent's lease grants it.

    gate.py ACTION COMMAND [ARG...]

It asks `lease verify ACTION --json` (the token comes from $LEASE_TOKEN, never from argv) and
runs COMMAND only when the answer is granted. $LEASE names the lease binary when it is not on
PATH (examples/Makefile passes it on). Exit status: COMMAND's own when granted (127 when it
cannot be found, 126 when it cannot be run); 1 when denied; 2 when lease cannot decide (no
token, unreadable store, no lease binary).
"""
import json
import os
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: gate.py ACTION COMMAND [ARG...]", file=sys.stderr)
        return 2
    action, command = sys.argv[1], sys.argv[2:]
    lease = os.environ.get("LEASE") or "lease"
    try:
        answer = subprocess.run(
            [lease, "verify", action, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            check=False,
        )
    except OSError as err:
        print(f"gate: cannot run {lease}: {err.strerror}: set LEASE to its path", file=sys.stderr)
        return 2
    try:
        decision = json.loads(answer.stdout)
    except json.JSONDecodeError:
        decision = {"granted": False, "reason": "no answer from lease verify"}
    if answer.returncode != 0 or not decision.get("granted"):
        print(f"gate: {action} refused: {decision.get('reason')}", file=sys.stderr)
        return 1 if answer.returncode == 1 else 2
    try:
        os.execvp(command[0], command)
    except OSError as err:
        # As a shell says it, with its status: 127 not found, 126 found but not runnable.
        print(f"gate: cannot run {command[0]}: {err.strerror}", file=sys.stderr)
        return 127 if isinstance(err, FileNotFoundError) else 126
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
