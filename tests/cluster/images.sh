#!/usr/bin/env bash
# Builds the OCI image archives the real node runs (there is no registry and
# no Docker engine here; zl-cluster assembles the archives from files):
#   registry.k8s.io/pause:3.10   the pod sandbox image (tests/cluster/cmd/pause)
#   localhost/zl-testapp:dev     a test workload that records when it runs
#   localhost/zen-lead:dev       zen-lead's release binary, laid out like the
#                                Dockerfile's image: /usr/local/bin/zen-lead as
#                                the entrypoint, user 65532:65532
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

log "building zen-lead (cargo build --release)"
(cd "$repo" && cargo build --release --locked --quiet)
bin="$repo/target/release/zen-lead"

# The release binary links glibc dynamically; ship it with exactly the shared
# libraries it needs (a self-contained layout), at the paths the loader uses.
zen_adds=(--add "$bin:/usr/local/bin/zen-lead:0755")
while read -r lib; do
  [[ -n "$lib" ]] && zen_adds+=(--add "$lib:$lib:0755")
done < <(ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | sort -u)

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
ls -la "$out"/*.tar
