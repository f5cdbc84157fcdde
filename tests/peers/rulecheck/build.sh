#!/usr/bin/env bash
# Builds tests/peers/rulecheck/bin/rulecheck: Prometheus's rule parser
# (github.com/prometheus/prometheus/model/rulefmt) as a command, for the tests
# that check the chart's PrometheusRule. Pinned by go.mod/go.sum; local Go only.
set -euo pipefail
cd "$(dirname "$0")"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0
mkdir -p bin
go build -trimpath -o bin/rulecheck .
