#!/usr/bin/env bash
# Builds the OCI image archives the real node runs (there is no registry and
# no Docker engine here; zl-cluster assembles the archives from files):
#   registry.k8s.io/pause:3.10   the pod sandbox image (tests/cluster/cmd/pause)
#   localhost/zl-testapp:dev     a test workload that records when it runs
#   localhost/zen-lead:dev       zen-lead's static (musl) release binaries, laid
#                                out like the Dockerfile's image:
#                                /usr/local/bin/zen-lead as the entrypoint,
#                                /usr/local/bin/zen-lead-pod (the agent's),
#                                user 65532:65532
#   localhost/zl-hactl:dev       a client-go controller (cmd/hactl) for the
#                                `api` activation tests
#   localhost/zl-hactl-rs:dev    its kube-rs twin (examples/ha-controller.rs)
#   localhost/zl-lepeer:dev      client-go's leaderelection in a pod: the peer
#                                of the overlap checker (tests/overlap.rs)
# `zl-cluster up` imports them into containerd; a second `up` re-imports, so a
# rebuilt binary reaches the node without restarting the cluster.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
out="$here/bin/images"
mkdir -p "$out" "$here/bin/image-src"
log() { printf 'images: %s\n' "$*"; }

go build -trimpath -ldflags "-s -w" -o bin/image-src/pause ./cmd/pause
go build -trimpath -ldflags "-s -w" -o bin/image-src/testapp ./cmd/testapp
go build -trimpath -ldflags "-s -w" -o bin/image-src/hactl ./cmd/hactl
go build -trimpath -ldflags "-s -w" -o bin/image-src/lepeer ./cmd/lepeer

# The shipped build: static (musl) binaries, like the Dockerfile's, so each
# image is its one file with nothing to resolve at run time (and the agent's
# resident memory carries no shared-library pages).
target=x86_64-unknown-linux-musl
log "building zen-lead and the kube-rs test controller (cargo build --release --target $target)"
(cd "$repo" && cargo build --release --locked --quiet --target "$target" --bin zen-lead --bin zen-lead-pod --example ha-controller)
bin="$repo/target/$target/release/zen-lead"
pod_bin="$repo/target/$target/release/zen-lead-pod"
hactl_rs="$repo/target/$target/release/examples/ha-controller"
for b in "$bin" "$pod_bin" "$hactl_rs"; do
  # A static(-pie) binary needs no shared libraries: ldd lists none with "=>".
  if ldd "$b" 2>/dev/null | grep -q '=>'; then
    echo "images: $b is dynamically linked; the images expect static binaries" >&2
    exit 1
  fi
done
zen_adds=(--add "$bin:/usr/local/bin/zen-lead:0755" --add "$pod_bin:/usr/local/bin/zen-lead-pod:0755")
rs_adds=(--add "$hactl_rs:/usr/local/bin/ha-controller:0755")

build() { # archive name, then zl-cluster image flags
  local archive="$out/$1.tar"; shift
  # The stamp covers the flags and the content of every file added.
  local stamp a files=()
  for a in "$@"; do
    if [[ "$a" == *:*:* && -f "${a%%:*}" ]]; then files+=("${a%%:*}"); fi
  done
  stamp="$(printf '%s\n' "$@" | sha256sum | cut -c1-16)-$(cat "${files[@]}" | sha256sum | cut -c1-16)"
  if [[ -f "$archive" && -f "$archive.stamp" && "$(cat "$archive.stamp")" == "$stamp" ]]; then
    log "$(basename "$archive") up to date"; return
  fi
  bin/zl-cluster image --out "$archive" "$@"
  echo "$stamp" > "$archive.stamp"
}
build pause --name registry.k8s.io/pause:3.10 --user 65535:65535 \
  --add bin/image-src/pause:/pause:0755 --entrypoint /pause
build testapp --name localhost/zl-testapp:dev \
  --add bin/image-src/testapp:/usr/local/bin/testapp:0755 --entrypoint /usr/local/bin/testapp
build zen-lead --name localhost/zen-lead:dev "${zen_adds[@]}" --entrypoint /usr/local/bin/zen-lead
build hactl --name localhost/zl-hactl:dev \
  --add bin/image-src/hactl:/usr/local/bin/hactl:0755 --entrypoint /usr/local/bin/hactl
build hactl-rs --name localhost/zl-hactl-rs:dev "${rs_adds[@]}" \
  --entrypoint /usr/local/bin/ha-controller
build lepeer --name localhost/zl-lepeer:dev \
  --add bin/image-src/lepeer:/usr/local/bin/lepeer:0755 --entrypoint /usr/local/bin/lepeer
ls -la "$out"/*.tar
