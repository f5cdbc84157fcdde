#!/usr/bin/env bash
# Builds the local cluster's binaries into tests/cluster/bin:
#   zl-cluster  etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kubectl (+ up/down)
#   kubectl     symlink to zl-cluster
#   lepeer      the client-go leader-election peer benchmarks compare against
#   kwok, helm  built with `go install` in their own modules, so their Kubernetes
#               library versions never collide with ours
# Go's build cache makes a rebuild cheap; a stamp skips even the link step when
# nothing that goes into a binary changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

KWOK_VERSION=v0.7.0
HELM_VERSION=v3.19.0
K8S_VERSION="$(awk '$1=="k8s.io/kubernetes"{print $2}' go.mod)"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=2025-01-01T00:00:00Z"
done

mkdir -p bin
log() { printf 'cluster build: %s\n' "$*"; }

# Prints a line every 100 packages so a cold build (10+ minutes on 2 cores)
# visibly makes progress.
progress() { awk '{n++; if (n % 100 == 0) { printf "cluster build:   %s: %d packages compiled\n", label, n; fflush() } } END { if (n) printf "cluster build:   %s: %d packages compiled\n", label, n }' label="$1"; }

stamp_of() { # inputs that determine a binary
  { go version; echo "$ldflags"; cat go.mod go.sum; find . -name '*.go' -not -path './bin/*' | sort | xargs cat; echo "$*"; } | sha256sum | cut -d' ' -f1
}

build_module_binary() { # name, package
  local name="$1" pkg="$2" stamp
  stamp="$(stamp_of "$name" "$pkg")"
  if [[ -x "bin/$name" && -f "bin/.$name.stamp" && "$(cat "bin/.$name.stamp")" == "$stamp" ]]; then
    log "$name up to date"
    return
  fi
  log "building $name ($pkg, Kubernetes $K8S_VERSION)"
  local start=$SECONDS
  go build -v -trimpath -ldflags "$ldflags" -o "bin/$name.tmp" "$pkg" 2> >(progress "$name" >&2)
  mv "bin/$name.tmp" "bin/$name"
  echo "$stamp" > "bin/.$name.stamp"
  log "built $name in $((SECONDS - start))s"
}

go_install() { # name, module path@version
  local name="$1" target="$2"
  if [[ -x "bin/$name" && -f "bin/.$name.stamp" && "$(cat "bin/.$name.stamp")" == "$target $(go version)" ]]; then
    log "$name up to date"
    return
  fi
  log "building $name ($target)"
  local start=$SECONDS
  GOBIN="$here/bin" go install -v -trimpath -ldflags "-s -w" "$target" 2> >(progress "$name" >&2)
  echo "$target $(go version)" > "bin/.$name.stamp"
  log "built $name in $((SECONDS - start))s"
}

log "downloading Go modules (cached after the first run)"
go mod download
build_module_binary zl-cluster .
ln -sf zl-cluster bin/kubectl
build_module_binary lepeer ./cmd/lepeer
go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
if [[ "${ZL_SKIP_HELM:-}" != 1 ]]; then
  go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
log "binaries ready in $here/bin"
