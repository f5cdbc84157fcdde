#!/usr/bin/env bash
# `make demo`, after the cluster is up and zen-lead is built: runs
# `zen-lead controller` on this host (webhook on loopback, registered with the
# cluster), applies the demo pool, waits for a leader and shows it.
# `make cluster-down` stops the controller too (its files live under .cluster/).
set -euo pipefail
cd "$(dirname "$0")/../.."
KUBECTL=${KUBECTL:-tests/cluster/bin/kubectl}
BIN=${BIN:-target/release/zen-lead}
NS=${DEMO_NAMESPACE:-zen-lead-demo}
dir=.cluster/demo
mkdir -p "$dir"
export KUBECONFIG=${KUBECONFIG:-$PWD/.cluster/kubeconfig}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [[ -f "$dir/controller.pid" ]] && kill -0 "$(cat "$dir/controller.pid")" 2>/dev/null; then
  kill "$(cat "$dir/controller.pid")"; sleep 1
fi
[[ -f "$dir/tls.crt" ]] || "$BIN" certs --out "$dir" --dns localhost --ip 127.0.0.1 >/dev/null
webhook_port=$(port); admin_port=$(port)
"$KUBECTL" create namespace zen-lead --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
"$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
nohup "$BIN" controller --webhook-addr "127.0.0.1:$webhook_port" --admin-addr "127.0.0.1:$admin_port" \
  --tls-cert-file "$PWD/$dir/tls.crt" --tls-key-file "$PWD/$dir/tls.key" \
  --agent-image localhost/zen-lead:dev --agent-image-pull-policy Never --watch-namespace "$NS" \
  > "$PWD/$dir/controller.log" 2>&1 &
echo $! > "$dir/controller.pid"
for _ in $(seq 1 200); do
  curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$dir/controller.pid")" 2>/dev/null || { echo "zen-lead controller exited; see $dir/controller.log" >&2; exit 1; }
  sleep 0.1
done
ca=$(base64 -w0 "$dir/ca.crt")
# webhook-config/local.yaml, scoped to the demo namespace so the demo never
# touches other namespaces (e.g. a later `make test`).
sed -e "s|\${WEBHOOK_PORT}|$webhook_port|g" -e "s|\${CA_BUNDLE}|$ca|g" \
    -e 's|^  name: zen-lead$|  name: zen-lead-demo|' -e 's|operator: NotIn|operator: In|' \
    -e "s|values: \\[\"kube-system\", \"zen-lead-system\"\\]|values: [\"$NS\"]|" \
    webhook-config/local.yaml | "$KUBECTL" apply -f - >/dev/null
echo "demo: zen-lead controller running (log: $dir/controller.log), webhook https://127.0.0.1:$webhook_port/mutate"

"$KUBECTL" apply -n "$NS" -f examples/demo/pool.yaml
"$KUBECTL" wait -n "$NS" leaderpolicy/demo-workers --for=jsonpath='{.status.phase}'=Stable --timeout=120s
# `process` activation: every pod is Ready; only the leader's app process runs.
for _ in $(seq 1 120); do
  "$KUBECTL" get pods -n "$NS" -l zen-lead.io/role=leader -o name 2>/dev/null | grep -q . && break
  sleep 1
done
"$KUBECTL" wait -n "$NS" pod -l zen-lead.io/role=leader --for=condition=Ready --timeout=120s
echo
"$KUBECTL" get leaderpolicy -n "$NS"
echo
"$KUBECTL" get pods -n "$NS" -L zen-lead.io/role
cat <<MSG

The pool has one leader. Every pod is Ready (2/2), but only the leader's app process runs;
the others hold it under \`zen-lead run\` until they lead.
Try:  export KUBECONFIG=$KUBECONFIG
      $KUBECTL delete pod -n $NS -l zen-lead.io/role=leader     # another pod's app starts
      $KUBECTL rollout restart -n $NS deploy/demo-workers       # completes: followers are Ready
      $KUBECTL logs -n $NS -l zen-lead.io/role=leader -c app    # the running app's start line
      $KUBECTL get lp -n $NS -w
MSG
