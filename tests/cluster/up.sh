#!/usr/bin/env bash
# Starts the local cluster (building it first when needed). Safe to run twice.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
start=$SECONDS
bash "$here/build.sh"
if [[ "${ZL_REAL_NODE:-1}" == 1 ]]; then
  bash "$here/images.sh"
  set -- --real-node=true "$@"
else
  set -- --real-node=false "$@"
fi
"$here/bin/zl-cluster" up --state "$repo/.cluster" --kwok "$here/bin/kwok" "$@"
# See the file's comment: a workaround for a Kubernetes bug, not a zen-lead
# object (docs/ARCHITECTURE.md, "Server-side fencing").
KUBECONFIG="$repo/.cluster/kubeconfig" "$here/bin/kubectl" apply --server-side --field-manager=zl-cluster \
  -f "$here/manifests/lease-params-anchor.yaml" >/dev/null
echo "cluster-up: total $((SECONDS - start))s"
