#!/usr/bin/env bash
# The shipped build: zen-lead and zen-lead-pod as static (musl) release
# binaries, for the release image (tools/oci/release-image.sh) and the krew
# plugin (tools/krew/package.sh). Prints the directory that holds them.
# The local cluster's kube-rs test controller (examples/ha-controller.rs) is
# built in the same invocation: built on its own, it changes the fingerprint of
# dependencies the two share, and each build would undo the other (minutes).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
target=x86_64-unknown-linux-musl
# The static build needs the musl target and musl-gcc (ring's C parts).
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" >&2
fi
if ! command -v musl-gcc >/dev/null; then
  echo "static-binaries: musl-gcc is missing: install musl-tools (sudo apt-get install -y musl-tools)" >&2
  exit 1
fi
(cd "$repo" && cargo build --release --locked --quiet --target "$target" --bin zen-lead --bin zen-lead-pod --example ha-controller) >&2
dir="${CARGO_TARGET_DIR:-$repo/target}/$target/release"
for b in "$dir/zen-lead" "$dir/zen-lead-pod" "$dir/examples/ha-controller"; do
  # A static(-pie) binary needs no shared libraries: ldd lists none with "=>".
  if ldd "$b" 2>/dev/null | grep -q '=>'; then
    echo "static-binaries: $b is dynamically linked; the image and the plugin expect static binaries" >&2
    exit 1
  fi
done
echo "$dir"
