#!/usr/bin/env bash
# Builds the OCI image archives imported into the real node's containerd
# (no Docker engine here: tools/oci's zl-image assembles them from files):
#   registry.k8s.io/pause:3.10   the pod sandbox image (tests/cluster/cmd/pause)
#   localhost/zl-testapp:dev     a test workload that records when it runs
#   localhost/zl-hactl:dev       a client-go controller (cmd/hactl) for the
#                                `api` activation tests
#   localhost/zl-hactl-rs:dev    its kube-rs twin (examples/ha-controller.rs)
#   localhost/zl-lepeer:dev      client-go's leaderelection in a pod: the peer
#                                of the overlap checker (tests/overlap.rs)
# and, not imported (the kubelet pulls them from the local registry, to which
# containerd mirrors docker.io and ghcr.io: realnode.go), in bin/release:
#   zen-lead.tar  the release image (`make image`, tools/oci/release-image.sh),
#                 which up.sh pushes as $ZL_REGISTRY/zen-lead:<appVersion>
#                 and under the chart's name, ghcr.io/kube-zen/zen-lead
#   busybox.tar   docker.io/library/busybox:<BUSYBOX_TAG>, the examples' app,
#                 made from Debian's busybox-static (its shell runs the
#                 applets without links), which up.sh pushes as the name the
#                 examples use
# `zl-cluster up` imports them into containerd; a second `up` re-imports, so a
# rebuilt binary reaches the node without restarting the cluster.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
. "$repo/tools/lib.sh"
cd "$here"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
out="$here/bin/images"
mkdir -p "$out" "$here/bin/image-src"
log() { printf 'images: %s\n' "$*"; }

go build -trimpath -ldflags "-s -w" -o bin/image-src/pause ./cmd/pause
go build -trimpath -ldflags "-s -w" -o bin/image-src/testapp ./cmd/testapp
go build -trimpath -ldflags "-s -w" -o bin/image-src/hactl ./cmd/hactl
go build -trimpath -ldflags "-s -w" -o bin/image-src/lepeer ./cmd/lepeer

# zen-lead's image is the release image (`make image`), named as up.sh pushes
# it to the local registry. It is not imported: the kubelet pulls it.
version="$(zl_app_version "$repo")"
mkdir -p "$here/bin/release"
bash "$repo/tools/oci/release-image.sh" "$ZL_REGISTRY/zen-lead:$version" "$here/bin/release/zen-lead.tar"
rm -f "$out/zen-lead.tar" "$out/zen-lead.tar.stamp" # imported by earlier versions of this script
# The kube-rs test controller: release-image.sh builds it (static, musl) in
# the same cargo invocation and checks it is static.
hactl_rs="$repo/target/x86_64-unknown-linux-musl/release/examples/ha-controller"
rs_adds=(--add "$hactl_rs:/usr/local/bin/ha-controller:0755")
zl_image="$repo/tools/oci/bin/zl-image"

build() { # archive name, then zl-image build flags
  local archive="$out/$1.tar"; shift
  # The stamp covers the flags and the content of every file added.
  local stamp a files=()
  for a in "$@"; do
    if [[ "$a" == *:*:* && -f "${a%%:*}" ]]; then files+=("${a%%:*}"); fi
  done
  stamp="$(printf '%s\n' "$@" | sha256sum | cut -c1-16)-$(cat "$zl_image" "${files[@]}" | sha256sum | cut -c1-16)"
  if [[ -f "$archive" && -f "$archive.stamp" && "$(cat "$archive.stamp")" == "$stamp" ]]; then
    log "$(basename "$archive") up to date"; return
  fi
  "$zl_image" build --out "$archive" "$@"
  echo "$stamp" > "$archive.stamp"
}
build pause --name registry.k8s.io/pause:3.10 --user 65535:65535 \
  --add bin/image-src/pause:/pause:0755 --entrypoint /pause
build testapp --name localhost/zl-testapp:dev \
  --add bin/image-src/testapp:/usr/local/bin/testapp:0755 --entrypoint /usr/local/bin/testapp
build hactl --name localhost/zl-hactl:dev \
  --add bin/image-src/hactl:/usr/local/bin/hactl:0755 --entrypoint /usr/local/bin/hactl
build hactl-rs --name localhost/zl-hactl-rs:dev "${rs_adds[@]}" \
  --entrypoint /usr/local/bin/ha-controller
build lepeer --name localhost/zl-lepeer:dev \
  --add bin/image-src/lepeer:/usr/local/bin/lepeer:0755 --entrypoint /usr/local/bin/lepeer

# The examples' app image from Debian's busybox-static, whose upstream
# version must be the tag (the examples pin it).
busybox_tag=1.35.0
busybox_deb_dir="$here/bin/image-src/busybox-$busybox_tag"
if [[ ! -x "$busybox_deb_dir/bin/busybox" ]]; then
  busybox_candidate() { apt-cache policy busybox-static 2>/dev/null | awk '/Candidate:/ {print $2}'; }
  candidate="$(busybox_candidate)"
  # A fresh machine may have no package lists yet (CI images often ship none).
  if [[ -z "$candidate" || "$candidate" == "(none)" ]] && [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq
    candidate="$(busybox_candidate)"
  fi
  if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
    echo "images: apt knows no busybox-static package (the examples' app image is made from it): run apt-get update as root" >&2
    exit 1
  fi
  upstream="${candidate#*:}"; upstream="${upstream%%-*}"
  if [[ "$upstream" != "$busybox_tag" ]]; then
    # Still a busybox; the examples' pinned name is what the cluster serves.
    echo "images: warning: Debian's busybox-static is $candidate, served as busybox:$busybox_tag (the examples' tag)" >&2
  fi
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download -q busybox-static && dpkg-deb -x busybox-static_*.deb x)
  mkdir -p "$busybox_deb_dir/bin"
  cp "$tmp/x/bin/busybox" "$busybox_deb_dir/bin/busybox"
  rm -rf "$tmp"
  : >"$busybox_deb_dir/empty"
fi
# Like the zen-lead image, pushed and pulled, not imported.
out="$here/bin/release" build busybox --name "docker.io/library/busybox:$busybox_tag" --user 0:0 \
  --add "$busybox_deb_dir/bin/busybox:/bin/busybox:0755" --add "$busybox_deb_dir/bin/busybox:/bin/sh:0755" \
  --add "$busybox_deb_dir/empty:/tmp/.keep:0644" --entrypoint /bin/sh
# What up.sh pushes to the local registry: archive, then the name in the
# registry. containerd's mirrors (realnode.go) map docker.io/X and ghcr.io/X
# to the registry's X, so the examples and the chart pull their names as
# written.
cat >"$here/bin/release/push.list" <<LIST
$here/bin/release/zen-lead.tar $ZL_REGISTRY/zen-lead:$version
$here/bin/release/zen-lead.tar $ZL_REGISTRY/kube-zen/zen-lead:$version
$here/bin/release/busybox.tar $ZL_REGISTRY/library/busybox:$busybox_tag
LIST
ls -la "$out"/*.tar "$here/bin/release"/*.tar
