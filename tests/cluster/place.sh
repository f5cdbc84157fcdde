#!/usr/bin/env bash
# Usage: place.sh FILE...: prints the manifests of FILEs with every pod
# template placed on the local cluster's real node (the KWOK nodes run no
# containers). The examples carry no placement, so that they run on any
# cluster as written; the harness (tests/examples.rs, examples/demo/run.sh)
# applies them through this. kubectl's built-in kustomize, JSON patches by
# kind (a kind the files do not have is left alone).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
KUBECTL=${KUBECTL:-$here/bin/kubectl}
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
resources=()
for f in "$@"; do
  name="${#resources[@]}-$(basename "$f")"
  cp "$f" "$dir/$name"
  resources+=("$name")
done
patch() { # kind, path of its pod spec
  cat <<YAML
  - target: {kind: $1}
    patch: |-
      - {op: add, path: $2/nodeSelector, value: {zen-lead.io/node: real}}
      - {op: add, path: $2/tolerations, value: [{key: zen-lead.io/real-node, operator: Exists, effect: NoSchedule}]}
YAML
}
{
  # The files' order (a LeaderPolicy before the workloads that join it).
  printf 'sortOptions:\n  order: fifo\n'
  echo "resources:"
  printf '  - %s\n' "${resources[@]}"
  echo "patches:"
  patch Deployment /spec/template/spec
  patch StatefulSet /spec/template/spec
  patch Job /spec/template/spec
  patch CronJob /spec/jobTemplate/spec/template/spec
} >"$dir/kustomization.yaml"
"$KUBECTL" kustomize "$dir"
