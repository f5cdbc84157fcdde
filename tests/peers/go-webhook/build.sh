#!/usr/bin/env bash
# Builds the Go benchmark peer into tests/peers/go-webhook/bin/go-webhook.
# Pinned by go.mod/go.sum; uses the local Go toolchain only.
set -euo pipefail
cd "$(dirname "$0")"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
mkdir -p bin
go build -trimpath -o bin/go-webhook .
