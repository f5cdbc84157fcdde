#!/usr/bin/env bash
# Packs zen-lead as a krew plugin: OUT/zen-lead-v<VERSION>-linux-amd64.tar.gz
# (the binary as `zen-lead` and LICENSE; fixed timestamps and owners, so the
# same binary gives the same archive) and OUT/zen-lead.yaml, the manifest of
# tools/krew/zen-lead.yaml with the archive's URI (URI_BASE/<archive>) and
# sha256 filled in.
#   package.sh BIN URI_BASE OUT     e.g. target/x86_64-unknown-linux-musl/release/zen-lead \
#                                        https://github.com/kube-zen/zen-lead/releases/download/v0.1.0 target/krew
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
. "$repo/tools/lib.sh"
bin="${1:?usage: package.sh BIN URI_BASE OUT}"
uri_base="${2:?usage: package.sh BIN URI_BASE OUT}"
out="${3:?usage: package.sh BIN URI_BASE OUT}"
version="$(zl_app_version "$repo")"
if [[ ! "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]]; then
  echo "krew: no semantic version in charts/zen-lead/Chart.yaml's appVersion (found '$version')" >&2
  exit 1
fi
if [[ ! -x "$bin" ]]; then
  echo "krew: $bin is not an executable (build it first, or set KREW_BIN)" >&2
  exit 1
fi
archive="zen-lead-v$version-linux-amd64.tar.gz"
mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$bin" "$stage/zen-lead"
install -m 0644 "$repo/LICENSE" "$stage/LICENSE"
tar -C "$stage" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - zen-lead LICENSE |
  gzip -9n > "$out/$archive"
sha256="$(sha256sum "$out/$archive" | cut -d' ' -f1)"
uri="${uri_base%/}/$archive"
# sed, not envsubst: only these three placeholders change.
sed -e "s|\${VERSION}|$version|g" -e "s|\${URI}|$uri|g" -e "s|\${SHA256}|$sha256|g" \
  "$here/zen-lead.yaml" > "$out/zen-lead.yaml"
if grep -q '\${' "$out/zen-lead.yaml"; then
  echo "krew: $out/zen-lead.yaml still has a placeholder" >&2
  exit 1
fi
echo "$out/$archive"
echo "$out/zen-lead.yaml"
