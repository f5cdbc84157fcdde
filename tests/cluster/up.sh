#!/usr/bin/env bash
# Starts the local cluster (building it first when needed). Safe to run twice.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
start=$SECONDS
bash "$here/build.sh"
echo "cluster-up: cluster binaries ready after $((SECONDS - start))s (a first build takes 10+ minutes on 2 cores)"
real_node="${ZL_REAL_NODE:-1}"
if [[ "$real_node" == 1 ]]; then
  images=$SECONDS
  # The image tools and the registry the real node pulls from (tools/oci).
  bash "$repo/tools/oci/build.sh"
  bash "$here/images.sh"
  echo "cluster-up: images ready in $((SECONDS - images))s"
  set -- --real-node=true --registry "$repo/tools/oci/bin/zl-registry" "$@"
else
  set -- --real-node=false "$@"
fi
"$here/bin/zl-cluster" up --state "$repo/.cluster" --kwok "$here/bin/kwok" "$@"
# See the file's comment: a workaround for a Kubernetes bug, not a zen-lead
# object (docs/ARCHITECTURE.md, "Server-side fencing").
KUBECONFIG="$repo/.cluster/kubeconfig" "$here/bin/kubectl" apply --server-side --field-manager=zl-cluster \
  -f "$here/manifests/lease-params-anchor.yaml" >/dev/null
if [[ "$real_node" == 1 ]]; then
  # The release image in the local registry under the chart's default tag, so
  # the chart installs with only image.repository=198.19.128.1:5000/zen-lead
  # or with no image values at all (ghcr.io is mirrored to the registry), and
  # the kubelet pulls it like on any cluster; the examples' busybox likewise
  # (docker.io is mirrored). images.sh lists what to push.
  while read -r archive image; do
    "$repo/tools/oci/bin/zl-image" push --insecure "$archive" "$image"
    # The tag may now name a rebuilt image: forget the node's copy (under the
    # name a pod pulls), so that the next pod pulls the new one
    # (IfNotPresent would keep running the old).
    for name in "$image" "docker.io/${image#*/}" "ghcr.io/${image#*/}"; do
      ctr --address "$repo/.cluster/containerd/containerd.sock" -n k8s.io images rm "$name" >/dev/null 2>&1 || true
    done
  done <"$here/bin/release/push.list"
fi
echo "cluster-up: total $((SECONDS - start))s"
