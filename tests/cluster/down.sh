#!/usr/bin/env bash
# Stops exactly the processes `up.sh` started and removes the cluster's state.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
if [[ ! -x "$here/bin/zl-cluster" ]]; then
  [[ -d "$repo/.cluster" ]] && echo "cluster-down: zl-cluster is not built; cannot stop processes safely" >&2 && exit 1
  echo "cluster-down: nothing to do"; exit 0
fi
"$here/bin/zl-cluster" down --state "$repo/.cluster"
