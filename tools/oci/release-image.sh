#!/usr/bin/env bash
# Builds zen-lead's release image as an OCI archive, without a Docker engine,
# in the Dockerfile's layout: static (musl) binaries, /usr/local/bin/zen-lead
# as the entrypoint, /usr/local/bin/zen-lead-pod (what the injected agent
# runs), user 65532:65532. Fixed timestamps and ordering: the same binaries
# give the same digest (and cargo builds the same binaries again from the
# same checkout with the same Rust, musl-gcc and Go).
#   release-image.sh IMAGE ARCHIVE     e.g. ghcr.io/kube-zen/zen-lead:0.1.0 target/image/zen-lead.oci.tar
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
image="${1:?usage: release-image.sh IMAGE ARCHIVE}"
archive="${2:?usage: release-image.sh IMAGE ARCHIVE}"
bash "$here/build.sh" zl-image
binaries="$(bash "$repo/tools/static-binaries.sh")"
bin="$binaries/zen-lead"
pod_bin="$binaries/zen-lead-pod"
mkdir -p "$(dirname "$archive")"
"$here/bin/zl-image" build --out "$archive" --name "$image" --user 65532:65532 \
  --add "$bin:/usr/local/bin/zen-lead:0755" --add "$pod_bin:/usr/local/bin/zen-lead-pod:0755" \
  --entrypoint /usr/local/bin/zen-lead
