#!/usr/bin/env bash
# Builds the image tools into tools/oci/bin (Go modules only, no Docker):
#   zl-image     assembles zen-lead's release image as an OCI archive and
#                pushes an archive to any registry (`make image`, `make push`,
#                and the local cluster's images)
#   zl-registry  the CNCF distribution registry with local-disk storage only:
#                the local cluster's registry (tests/cluster)
# Usage: build.sh [zl-image|zl-registry]... (default: both). A stamp skips
# the build when nothing that goes into a binary changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
mkdir -p bin
[[ $# -gt 0 ]] || set -- zl-image zl-registry
for name in "$@"; do
  stamp="$({ go version; cat go.mod go.sum; find "cmd/$name" -name '*.go' | sort | xargs cat; } | sha256sum | cut -d' ' -f1)"
  if [[ -x "bin/$name" && "$(cat "bin/.$name.stamp" 2>/dev/null)" == "$stamp" ]]; then
    continue
  fi
  start=$SECONDS
  go build -trimpath -ldflags "-s -w" -o "bin/$name.tmp" "./cmd/$name"
  mv "bin/$name.tmp" "bin/$name"
  echo "$stamp" > "bin/.$name.stamp"
  echo "oci: built $name in $((SECONDS - start))s"
done
