#!/bin/sh
# Exit 0 when this pod leads its pool, 1 when it does not, 2 when the agent
# cannot be asked. POSIX sh and curl only; no JSON tool needed.
#   if ./is-leader.sh; then run-the-nightly-cleanup; fi
port="${ZEN_LEAD_AGENT_PORT:-9466}"
body=$(curl -fsS --max-time 2 "http://127.0.0.1:${port}/v1/leader") || exit 2
case "$body" in
  *'"leading":true'*) exit 0 ;;
  *) exit 1 ;;
esac
