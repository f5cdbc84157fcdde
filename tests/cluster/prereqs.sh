#!/usr/bin/env bash
# What `make test`, `make demo` and CI need on this machine type (Debian,
# x86_64) beyond bash, make, a Rust toolchain (rustup) and Go >= 1.26.7:
#   - the Rust target x86_64-unknown-linux-musl (the shipped, static build
#     the images carry);
#   - Debian packages: musl-tools (ring's C parts for musl), containerd, runc,
#     containernetworking-plugins and iptables (the local cluster's real
#     node), curl (`make run` waits on the webhook with it).
# What is missing is installed when possible: the rustup target always, the
# Debian packages when running as root. Otherwise the script stops and names
# each missing piece with the command that installs it. Safe to run again:
# with everything present it only checks (well under a second).
#
# ZL_PREREQS_AS_ROOT=0 behaves as a non-root user would (the tests use it, so
# they never install anything); ZL_PREREQS_CNI_DIR moves where the CNI plugins
# are looked for.
set -euo pipefail
start=$SECONDS
log() { printf 'prereqs: %s\n' "$*"; }

musl_target=x86_64-unknown-linux-musl
cni_dir=${ZL_PREREQS_CNI_DIR:-/usr/lib/cni}
as_root=${ZL_PREREQS_AS_ROOT:-$([[ $(id -u) == 0 ]] && echo 1 || echo 0)}

problems=()  # cannot be installed here: "what is missing: how to get it"
packages=()  # Debian packages to install

have() { command -v "$1" >/dev/null 2>&1; }

# Toolchains: named, never installed (they come from their own installers).
if ! have cargo || ! have rustup; then
  problems+=("a Rust toolchain with rustup (cargo, rustup): install it from https://rustup.rs")
fi
if ! have go; then
  problems+=("Go >= 1.26.7 (builds the local cluster, its registry and the image tools from Go modules): install it from https://go.dev/dl")
else
  # The newest go directive among the Go modules here (the registry's
  # distribution/v3 needs 1.26, Prometheus's rule parser 1.26.7).
  go_version=$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\)\.\{0,1\}\([0-9]*\).*/\1 \2/p')
  read -r go_minor go_patch <<<"${go_version:-0 0}"
  if (( ${go_minor:-0} < 26 || (${go_minor:-0} == 26 && ${go_patch:-0} < 7) )); then
    problems+=("Go >= 1.26.7 (found $(go env GOVERSION 2>/dev/null || echo 'an unknown version')): install it from https://go.dev/dl")
  fi
fi

# The musl target: rustup installs it for the current user, root or not.
if have rustup && ! rustup target list --installed 2>/dev/null | grep -qx "$musl_target"; then
  log "adding the Rust target $musl_target (rustup target add $musl_target)"
  rustup target add "$musl_target" || problems+=("the Rust target $musl_target: run rustup target add $musl_target")
fi

have musl-gcc || packages+=(musl-tools)
have containerd || packages+=(containerd)
have runc || packages+=(runc)
[[ -x "$cni_dir/bridge" ]] || packages+=(containernetworking-plugins)
have iptables || packages+=(iptables)
have curl || packages+=(curl)

if ((${#packages[@]})); then
  if [[ "$as_root" == 1 ]] && have apt-get; then
    log "installing Debian packages: ${packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
  else
    problems+=("Debian packages ${packages[*]}: run sudo apt-get install -y ${packages[*]}")
  fi
fi

if ((${#problems[@]})); then
  {
    echo "prereqs: missing what the local cluster, the tests and the demo need:"
    for p in "${problems[@]}"; do echo "  - $p"; done
  } >&2
  exit 1
fi
log "ok ($((SECONDS - start)) s)"
