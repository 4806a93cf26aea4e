#!/bin/sh
# Launch an AI agent (or any long-running tool) with its own short-lived, narrowed token, and
# keep a receipt of what it did with it.
#
#   examples/agent.sh ./my-agent --task "summarise drafts"
#
# The agent gets LEASE_TOKEN with only AGENT_SCOPE, for at most AGENT_TTL; the token is revoked
# the moment the agent exits, and Ctrl-C, kill and exit codes behave as if lease were not there.
# AGENT_RECEIPT (default: agent-receipt.json) then holds every action the agent was granted or
# denied; `lease suggest` turns it into the narrowest scope for next time.
set -eu

scope=${AGENT_SCOPE:-read:articles,write:draft}
ttl=${AGENT_TTL:-30m}
receipt=${AGENT_RECEIPT:-agent-receipt.json}

if [ "$#" -eq 0 ]; then
    echo "usage: $0 AGENT [ARG...]" >&2
    exit 2
fi

exec lease run --scope "$scope" --ttl "$ttl" --receipt "$receipt" --scrub '*_TOKEN' --scrub 'AWS_*' -- "$@"
