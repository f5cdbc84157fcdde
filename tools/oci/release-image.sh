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
target=x86_64-unknown-linux-musl
# The static build needs the musl target and musl-gcc (ring's C parts).
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null; then
  echo "release-image: musl-gcc is missing: install musl-tools (sudo apt-get install -y musl-tools)" >&2
  exit 1
fi
bash "$here/build.sh" zl-image
# The local cluster's kube-rs test controller (examples/ha-controller.rs) is
# built in the same invocation: built on its own, it changes the fingerprint of
# dependencies the two share, and each build would undo the other (minutes).
(cd "$repo" && cargo build --release --locked --quiet --target "$target" --bin zen-lead --bin zen-lead-pod --example ha-controller)
bin="$repo/target/$target/release/zen-lead"
pod_bin="$repo/target/$target/release/zen-lead-pod"
for b in "$bin" "$pod_bin" "$repo/target/$target/release/examples/ha-controller"; do
  # A static(-pie) binary needs no shared libraries: ldd lists none with "=>".
  if ldd "$b" 2>/dev/null | grep -q '=>'; then
    echo "release-image: $b is dynamically linked; the image expects static binaries" >&2
    exit 1
  fi
done
mkdir -p "$(dirname "$archive")"
"$here/bin/zl-image" build --out "$archive" --name "$image" --user 65532:65532 \
  --add "$bin:/usr/local/bin/zen-lead:0755" --add "$pod_bin:/usr/local/bin/zen-lead-pod:0755" \
  --entrypoint /usr/local/bin/zen-lead
