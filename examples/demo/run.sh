#!/usr/bin/env bash
# `make demo`, once the local cluster is up (its registry holds the release
# image and busybox, pushed by cluster-up, and the node pulls ghcr.io and
# docker.io names from it): installs zen-lead with the Helm chart the way a
# user does, with the chart's own image name (release `zen-lead-demo`,
# namespace zen-lead-demo-system, self-managed TLS, scoped to the demo
# namespace so the rest of the cluster, e.g. a later `make test`, is left
# alone), applies examples/demo/pool.yaml as written and the local cluster's
# test controller (tests/cluster/manifests/demo-controller.yaml), both with the
# placement on its real node (tests/cluster/place.sh), then shows:
#   1. a controller in `api` activation: three Ready replicas, one writer;
#   2. a worker pool in `process` activation: one app process running;
#   3. a live failover of each: the leader deleted, the take-over timed;
#   4. what to try next.
# Run it again at will (helm upgrade --install, kubectl apply); `make
# cluster-down` removes everything with the cluster.
set -euo pipefail
cd "$(dirname "$0")/../.."
KUBECTL=${KUBECTL:-tests/cluster/bin/kubectl}
HELM=${HELM:-tests/cluster/bin/helm}
NS=${DEMO_NAMESPACE:-zen-lead-demo}
RELEASE=zen-lead-demo
SYSTEM_NS=zen-lead-demo-system
export KUBECONFIG=${KUBECONFIG:-$PWD/.cluster/kubeconfig}
k() { "$KUBECTL" "$@"; }
say() { printf '\n== %s\n' "$*"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# An earlier demo ran the controller on the host and registered a webhook
# configuration under the name the chart now uses: stop and remove both.
if [[ -f .cluster/demo/controller.pid ]]; then
  kill "$(cat .cluster/demo/controller.pid)" 2>/dev/null || true
  rm -f .cluster/demo/controller.pid
  k delete mutatingwebhookconfiguration zen-lead-demo --ignore-not-found >/dev/null
fi

say "1/4 installing zen-lead with Helm (release $RELEASE in $SYSTEM_NS, the chart's image)"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null
values=$(mktemp)
trap 'rm -f "$values"' EXIT
# Only the real node runs containers (the KWOK nodes fake them).
cat >"$values" <<YAML
nodeSelector:
  zen-lead.io/node: real
tolerations:
  - key: zen-lead.io/real-node
    operator: Exists
    effect: NoSchedule
tls:
  mode: selfManaged
controller:
  watchNamespace: $NS
webhook:
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values: [$NS]
YAML
start=$(now_ms)
"$HELM" upgrade --install "$RELEASE" charts/zen-lead --namespace "$SYSTEM_NS" --create-namespace \
  -f "$values" --wait --timeout 5m >/dev/null
echo "installed in $(( ($(now_ms) - start) / 1000 )) s:"
k get deploy -n "$SYSTEM_NS"

say "applying the demo pools in namespace $NS"
KUBECTL="$KUBECTL" bash tests/cluster/place.sh tests/cluster/manifests/demo-controller.yaml examples/demo/pool.yaml \
  | k apply -n "$NS" -f -
for pool in demo-controller demo-workers; do
  k wait -n "$NS" "leaderpolicy/$pool" --for=jsonpath='{.status.phase}'=Stable --timeout=180s >/dev/null
  k rollout status -n "$NS" "deploy/$pool" --timeout=180s >/dev/null
done

# The leader's pod: the one labelled leader that is not terminating.
leader_of() {
  k get pods -n "$NS" -l "app=$1,zen-lead.io/role=leader" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}' 2>/dev/null \
    | awk 'NF == 1 { print $1; exit }' || true
}
writer() { k get configmap heartbeat -n "$NS" -o jsonpath='{.data.writer}' 2>/dev/null || true; }
wait_for() { # what, seconds, command...: until the command prints something
  local what=$1 limit=$2 out
  shift 2
  for _ in $(seq 1 $((limit * 10))); do
    out=$("$@" || true)
    if [[ -n "$out" ]]; then echo "$out"; return 0; fi
    sleep 0.1
  done
  echo "demo: timed out after ${limit}s waiting for $what" >&2
  return 1
}

say "2/4 the controller pool (activation: api) and the worker pool (activation: process)"
k get leaderpolicy -n "$NS"
echo
k get pods -n "$NS" -L zen-lead.io/role -o wide | cut -c1-120
controller_leader=$(wait_for "the controller pool's leader" 120 leader_of demo-controller)
first_writer=$(wait_for "the controller's heartbeat" 60 writer)
echo
echo "demo-controller: 3 replicas Ready, caches warm; the heartbeat ConfigMap is written by $first_writer"
echo "(the leader is $controller_leader); the two followers' writes are refused by their agents' gates."

say "3/4 live failover: deleting each pool's leader"
# api: from the delete to the first heartbeat written by another replica.
t0=$(now_ms)
k delete pod -n "$NS" "$controller_leader" --wait=false >/dev/null
not_old_writer() { local w; w=$(writer); [[ -n "$w" && "$w" != "$controller_leader" ]] && echo "$w"; }
new_writer=$(wait_for "another replica's heartbeat" 60 not_old_writer)
echo "demo-controller: deleted $controller_leader; $new_writer wrote the heartbeat $(( $(now_ms) - t0 )) ms later"
echo "  (measured by polling kubectl, so the figure includes up to ~200 ms of polling)"

# process: from the delete to the new leader's app process start (its
# "started" line, as the kubelet timestamped it, wall clock in ns).
worker_leader=$(wait_for "the worker pool's leader" 60 leader_of demo-workers)
t0_ns=$(date +%s%N)
k delete pod -n "$NS" "$worker_leader" --wait=false >/dev/null
other_leader() { local l; l=$(leader_of demo-workers); [[ -n "$l" && "$l" != "$worker_leader" ]] && echo "$l"; }
new_leader=$(wait_for "a new worker leader" 60 other_leader)
app_start() {
  local at
  at=$(k logs -n "$NS" "$new_leader" -c app --timestamps 2>/dev/null | grep ': started$' | tail -1 | cut -d' ' -f1)
  [[ -n "$at" ]] && date -d "$at" +%s%N
}
started_ns=$(wait_for "the new leader's app to start" 60 app_start)
echo "demo-workers: deleted $worker_leader; the app process of $new_leader started $(( (started_ns - t0_ns) / 1000000 )) ms later"

say "4/4 what to try next"
cat <<MSG
export KUBECONFIG=$KUBECONFIG
$KUBECTL get lp -n $NS -w                                        # leaders, candidates, phase
$KUBECTL rollout restart -n $NS deploy/demo-controller          # completes: followers are Ready
$KUBECTL logs -n $NS -l zen-lead.io/role=leader -c controller    # the controller's writes (JSON lines)
$KUBECTL delete pod -n $NS -l app=demo-workers,zen-lead.io/role=leader   # another pod's app starts
$KUBECTL get lease -n $NS -o wide                                # the pools' Leases
Your own workload: annotate its pod template with zen-lead/pool: NAME and create a LeaderPolicy NAME
(examples/). Re-run: make demo. Remove everything: make cluster-down.
MSG
