#!/usr/bin/env bash
# Starts the local cluster (building it first when needed). Safe to run twice.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
start=$SECONDS
bash "$here/build.sh"
"$here/bin/zl-cluster" up --state "$repo/.cluster" --kwok "$here/bin/kwok" "$@"
echo "cluster-up: total $((SECONDS - start))s"
