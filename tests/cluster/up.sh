#!/usr/bin/env bash
# Starts the local cluster (building it first when needed). Safe to run twice.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
start=$SECONDS
bash "$here/build.sh"
echo "cluster-up: cluster binaries ready after $((SECONDS - start))s (a first build takes 10+ minutes on 2 cores)"
if [[ "${ZL_REAL_NODE:-1}" == 1 ]]; then
  images=$SECONDS
  bash "$here/images.sh"
  echo "cluster-up: images ready in $((SECONDS - images))s"
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
