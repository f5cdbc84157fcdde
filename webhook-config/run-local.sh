#!/usr/bin/env bash
# `make run`: zen-lead controller on this host against the current kubeconfig,
# with the development certificates in certs/, and the local webhook
# configuration registered so annotated workloads applied afterwards are
# injected. Ctrl-C stops the controller and removes the registration (a
# registration pointing at nothing would block labelled pods: failurePolicy Fail).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/zen-lead}
KUBECTL=${KUBECTL:-kubectl}
WEBHOOK_PORT=${WEBHOOK_PORT:-9443}
ADMIN_PORT=${ADMIN_PORT:-9480}
# The webhook configuration's name; with ZEN_LEAD_WATCH_NAMESPACE set (the
# controller's own flag) the webhook is scoped to that namespace too, so a
# developer loop (or a test) leaves the rest of the cluster alone.
CONFIG_NAME=${WEBHOOK_CONFIG_NAME:-zen-lead}
SCOPE=${ZEN_LEAD_WATCH_NAMESPACE:-}

# Two starts at once on a fresh clone (tests run them side by side) would
# both find no certificates and race to write them: the second then fails
# with "already exists". Take turns; the second finds the first's.
mkdir -p certs
(
  flock 9
  if [ ! -f certs/tls.crt ] || [ ! -f certs/ca.crt ]; then
    "$BIN" certs --out certs --dns localhost --ip 127.0.0.1
  fi
) 9>certs/.generate.lock

# The server-side fencing policy (config/fencing/, as `make install` applies
# it): without it the controller runs, but no pool is fenced on the server
# (its LeaderPolicy says so: ServerSideFencing=False, PolicyNotInstalled).
# Cluster-wide and shared, so it stays when the script stops.
if ! "$KUBECTL" apply --server-side --field-manager=zen-lead -f config/fencing/ >/dev/null; then
  echo "could not apply config/fencing/ (the server-side fencing policy); pools will not be fenced on the server" >&2
fi

"$BIN" controller \
  --webhook-addr "127.0.0.1:${WEBHOOK_PORT}" \
  --admin-addr "127.0.0.1:${ADMIN_PORT}" \
  --tls-cert-file certs/tls.crt --tls-key-file certs/tls.key &
pid=$!
cleanup() {
  "$KUBECTL" delete mutatingwebhookconfiguration "$CONFIG_NAME" --ignore-not-found >/dev/null 2>&1 || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Register only once the webhook itself answers over TLS with the CA we are
# about to register, so the Fail entry never points at a server that is not
# there. Not /readyz: that also waits for the controller's caches, and it
# turns 503 again for a moment when this controller takes its Lease and lists.
webhook_answers() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert certs/ca.crt \
    "https://127.0.0.1:${WEBHOOK_PORT}/mutate" 2>/dev/null) || true
  [ -n "$code" ] && [ "$code" != "000" ]
}
for _ in $(seq 1 300); do
  if webhook_answers; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "zen-lead controller exited" >&2; exit 1; fi
  sleep 0.1
done
if ! webhook_answers; then
  echo "the zen-lead webhook did not answer on https://127.0.0.1:${WEBHOOK_PORT} within 30 s" >&2
  exit 1
fi

ca=$(base64 -w0 certs/ca.crt)
scope=(-e "s|^  name: zen-lead\$|  name: ${CONFIG_NAME}|")
if [ -n "$SCOPE" ]; then
  scope+=(-e "s|operator: NotIn|operator: In|" \
          -e "s|values: \[\"kube-system\", \"zen-lead-system\"\]|values: [\"${SCOPE}\"]|")
fi
sed -e "s|\${WEBHOOK_PORT}|${WEBHOOK_PORT}|g" -e "s|\${CA_BUNDLE}|${ca}|g" "${scope[@]}" webhook-config/local.yaml \
  | "$KUBECTL" apply -f -
echo "zen-lead webhook on https://127.0.0.1:${WEBHOOK_PORT}/mutate (admin http://127.0.0.1:${ADMIN_PORT}); Ctrl-C stops it"
wait "$pid"
