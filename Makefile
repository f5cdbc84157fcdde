# zen-lead developer entry points. `make help` lists them.
#
# Fresh machine: `make demo` (see it work) and `make test` (everything,
# local cluster included). Both bring the local cluster up first.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# kubeconfig written by `make cluster-up`.
CLUSTER_KUBECONFIG := $(CURDIR)/.cluster/kubeconfig
# The cluster build's kubectl when it exists, else the one on PATH. Expanded
# when used, so a kubectl built by cluster-up earlier in the same run is found.
KUBECTL ?= $(shell if [ -x "$(CURDIR)/tests/cluster/bin/kubectl" ]; then echo "$(CURDIR)/tests/cluster/bin/kubectl"; else echo kubectl; fi)
BIN := $(CURDIR)/target/release/zen-lead
# The shipped (image) build: a static binary.
MUSL_TARGET := x86_64-unknown-linux-musl
CRD_FILE := charts/zen-lead/crds/leaderpolicies.coordination.kube-zen.io.yaml
DEMO_NAMESPACE := zen-lead-demo

.PHONY: help prereqs build image push krew crd manifests install run bench bench-webhook bench-election bench-controller bench-controller-baseline bench-gate bench-takeover bench-routing bench-fencing bench-memory test model chaos demo lint cluster-up cluster-down certs

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## Build the release binary (target/release/zen-lead)
	$(CARGO) build --release --locked

# The release image. IMAGE defaults to the chart's image and appVersion, so the
# chart's defaults name exactly what `make image` builds.
VERSION := $(shell . ./tools/lib.sh && zl_app_version)
IMAGE_REPOSITORY := ghcr.io/kube-zen/zen-lead
IMAGE ?= $(IMAGE_REPOSITORY):$(VERSION)
IMAGE_ARCHIVE ?= $(CURDIR)/target/image/zen-lead.oci.tar
# PUSH_FLAGS=--insecure for a registry that speaks plain HTTP.
PUSH_FLAGS ?=

image: ## Build the release image as an OCI archive, no Docker needed (IMAGE_ARCHIVE; IMAGE names it)
	bash tools/oci/release-image.sh "$(IMAGE)" "$(IMAGE_ARCHIVE)"

push: image ## Push the release image: make push IMAGE=registry/repo:tag (credentials: ~/.docker/config.json)
	tools/oci/bin/zl-image push $(PUSH_FLAGS) "$(IMAGE_ARCHIVE)" "$(IMAGE)"

# The krew plugin (kubectl zen-lead): KREW_BIN packs that binary instead of the
# static release build; KREW_URI_BASE is where the release publishes the archive.
KREW_BIN ?=
KREW_URI_BASE ?= https://github.com/kube-zen/zen-lead/releases/download/v$(VERSION)
KREW_OUT ?= $(CURDIR)/target/krew

krew: ## Build the kubectl plugin's krew archive and manifest (KREW_OUT: target/krew/)
	bin='$(KREW_BIN)'; \
	if [ -z "$$bin" ]; then bin="$$(bash tools/static-binaries.sh)/zen-lead"; fi; \
	bash tools/krew/package.sh "$$bin" "$(KREW_URI_BASE)" "$(KREW_OUT)"

manifests: ## Regenerate config/ and deploy/ (kubectl apply install) from the chart
	UPDATE_MANIFESTS=1 $(CARGO) test --locked --test manifests

crd: ## Regenerate the committed CRD from the Rust types
	$(CARGO) run --quiet --locked --bin zen-lead -- crd > $(CRD_FILE).tmp
	mv $(CRD_FILE).tmp $(CRD_FILE)
	@echo "wrote $(CRD_FILE)"

install: ## Apply the CRDs and the server-side fencing policy to the cluster of the current kubeconfig
	$(KUBECTL) apply --server-side --field-manager=zen-lead -f charts/zen-lead/crds/
	$(KUBECTL) wait --for=condition=Established --timeout=60s -f charts/zen-lead/crds/
	$(KUBECTL) apply --server-side --field-manager=zen-lead -f config/fencing/

# make run WEBHOOK_PORT=... ADMIN_PORT=... to move the local ports.
WEBHOOK_PORT ?= 9443
ADMIN_PORT ?= 9480

run: build ## Run the controller (webhook) on loopback and register it with the current kubeconfig's cluster
	BIN=$(BIN) KUBECTL=$(KUBECTL) WEBHOOK_PORT=$(WEBHOOK_PORT) ADMIN_PORT=$(ADMIN_PORT) bash webhook-config/run-local.sh

bench-webhook: ## Admission latency/throughput over TLS vs. a controller-runtime peer
	bash tests/peers/go-webhook/build.sh
	$(CARGO) bench --locked --bench webhook

bench-election: cluster-up ## Hand-off, takeover, idle requests and memory vs. client-go's election
	$(CARGO) build --release --locked --target $(MUSL_TARGET) --bin zen-lead-pod
	KUBECONFIG=$(CLUSTER_KUBECONFIG) ZEN_LEAD_AGENT_BIN=$(CURDIR)/target/$(MUSL_TARGET)/release/zen-lead-pod \
	  $(CARGO) bench --locked --bench election

# bench-controller reads ZL_BENCH_SIZES (pool counts, e.g. 300,1000,3000 for the
# scale curve), ZL_BENCH_RUNS and ZL_BENCH_BASELINE_BIN (a zen-lead binary to
# measure alternately with this build) from the environment.
bench-controller: cluster-up ## Pools x 3 pods (ZL_BENCH_SIZES, default 1000): convergence time, requests per pool, memory, steady API requests
	KUBECONFIG=$(CLUSTER_KUBECONFIG) $(CARGO) bench --locked --bench controller_scale

# The revision bench-controller-baseline compares with; empty: the parent of
# the first commit of the controller redesign (observe -> plan -> apply).
BASELINE_REV ?=
BASELINE_REDESIGN := ^controller: one pool.s pass as observe
bench-controller-baseline: cluster-up ## bench-controller alternating with BASELINE_REV's build (default: the commit before the controller redesign)
	rev='$(BASELINE_REV)'; \
	if [ -z "$$rev" ]; then \
	  first=$$(git log --format=%H --grep='$(BASELINE_REDESIGN)' | tail -n 1); \
	  if [ -z "$$first" ]; then echo "no commit matches '$(BASELINE_REDESIGN)': set BASELINE_REV" >&2; exit 1; fi; \
	  rev="$$first^"; \
	fi; \
	rev=$$(git rev-parse --verify "$$rev^{commit}"); \
	mkdir -p target/baseline; \
	if [ -x target/baseline/zen-lead ] && [ "$$(cat target/baseline/zen-lead.rev 2>/dev/null)" = "$$rev" ]; then \
	  echo "baseline $$rev: target/baseline/zen-lead already built"; \
	else \
	  wt=$$(mktemp -d /tmp/zen-lead-baseline.XXXXXX); \
	  trap 'git worktree remove --force "$$wt"' EXIT; \
	  git worktree add --detach "$$wt" "$$rev"; \
	  (cd "$$wt" && CARGO_TARGET_DIR=$(CURDIR)/target/baseline-build $(CARGO) build --release --locked --bin zen-lead); \
	  git worktree remove --force "$$wt"; trap - EXIT; \
	  cp target/baseline-build/release/zen-lead target/baseline/zen-lead; \
	  echo "$$rev" > target/baseline/zen-lead.rev; \
	fi; \
	KUBECONFIG=$(CLUSTER_KUBECONFIG) ZL_BENCH_BASELINE_BIN=$(CURDIR)/target/baseline/zen-lead \
	  $(CARGO) bench --locked --bench controller_scale

bench-gate: cluster-up ## API gate vs direct to the API server: GET/PATCH p50/p99, watch events/s
	KUBECONFIG=$(CLUSTER_KUBECONFIG) $(CARGO) bench --locked --bench gate

# ROUNDS: deletions of each pool's leader (20 by default).
ROUNDS ?= 20
bench-routing: cluster-up ## Leader pod deleted -> every answer from the new leader, through kube-proxy: spec.leaderService vs a role-label Service, p50/p99
	KUBECONFIG=$(CLUSTER_KUBECONFIG) ZEN_LEAD_BENCH_ROUNDS=$(or $(ROUTING_ROUNDS),10) $(CARGO) test --locked --test leader_service bench_routing_switch -- --ignored --nocapture

bench-takeover: cluster-up ## Delete the leader -> successor's app started: process vs start on the real node, p50/p99
	KUBECONFIG=$(CLUSTER_KUBECONFIG) ZEN_LEAD_BENCH_ROUNDS=$(ROUNDS) $(CARGO) test --locked --test process bench_takeover_process_vs_start -- --ignored --nocapture

# WORKLOADS, TEMPLATE_BYTES: the other tenant's Deployments and the size of
# each one's pod template. WORKLOADS=1000 writes 1 GiB into etcd and takes
# the API server to about 8 GiB: run it once, on a fresh cluster
# (make cluster-down cluster-up), and restart the cluster afterwards.
WORKLOADS ?= 300
TEMPLATE_BYTES ?= 1048576
# The binary measured is the shipped one: static (musl) release build.
bench-memory: cluster-up ## Controller memory with WORKLOADS large Deployments of another tenant in scope vs without
	$(CARGO) build --release --locked --target $(MUSL_TARGET) --bin zen-lead
	KUBECONFIG=$(CLUSTER_KUBECONFIG) ZEN_LEAD_BENCH_WORKLOADS=$(WORKLOADS) ZEN_LEAD_BENCH_TEMPLATE_BYTES=$(TEMPLATE_BYTES) \
	  ZEN_LEAD_CONTROLLER_BIN=$(CURDIR)/target/$(MUSL_TARGET)/release/zen-lead \
	  $(CARGO) test --locked --test controller_memory -- --ignored --nocapture

bench-fencing: cluster-up ## Server-side fencing: admission latency of a pool leader's and an outside pod's writes, policy on vs off, p50/p99
	KUBECONFIG=$(CLUSTER_KUBECONFIG) ZEN_LEAD_BENCH_ROUNDS=$(or $(FENCING_ROUNDS),6) $(CARGO) test --locked --test fencing bench_fencing_admission_latency -- --ignored --nocapture

certs: build ## Generate development certificates into certs/ (kept if present)
	@if [ -f certs/tls.crt ]; then echo "certs/ already has certificates (zen-lead certs --force to replace)"; \
	else $(BIN) certs --out certs --dns localhost --ip 127.0.0.1; fi

prereqs: ## Install what the cluster, tests and demo need (musl target; Debian packages as root), or name what is missing
	bash tests/cluster/prereqs.sh

cluster-up: prereqs ## Build (if needed) and start the local cluster
	bash tests/cluster/up.sh

cluster-down: ## Stop the local cluster and remove its state
	bash tests/cluster/down.sh

# Benchmarks are not tests: `cargo test --all-targets` would run their full
# measurement loops. They are compiled by `make lint` and run by `make bench`.
# election_chaos runs last: its API server restarts slow the cluster's own
# controllers for a while, and no suite should have to wait that out.
TEST_SUITES := $(filter-out election_chaos,$(basename $(notdir $(wildcard tests/*.rs))))
test: cluster-up ## Run every test, local-cluster tests included
	KUBECONFIG=$(CLUSTER_KUBECONFIG) $(CARGO) test --locked --lib --bins $(addprefix --test ,$(TEST_SUITES))
	KUBECONFIG=$(CLUSTER_KUBECONFIG) $(CARGO) test --locked --test election_chaos

# The election model's deep bound (tests/model.rs; `make test` runs the small
# one). Optimised, but without the release profile's fat LTO and single
# codegen unit: the checker's time is in its own loop, and they would only
# lengthen the build. ZEN_LEAD_MODEL_MAX_STATES caps a scenario (default 8
# million states).
model: ## Model-check the election at the deep bound: every interleaving, states explored, properties held
	CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
	  ZEN_LEAD_MODEL_DEPTH=1 $(CARGO) test --locked --release --test model -- --nocapture the_election_keeps_its_properties

# The overlap checker's full run (tests/overlap.rs): `make chaos FAULTS=300`.
FAULTS ?= 300
chaos: cluster-up ## Faults on the real node vs. a client-go peer; no two active replicas (table: target/overlap-report.md)
	KUBECONFIG=$(CLUSTER_KUBECONFIG) ZEN_LEAD_OVERLAP_FAULTS=$(FAULTS) $(CARGO) test --locked --test overlap -- --nocapture

bench: bench-webhook bench-election bench-controller bench-gate bench-takeover bench-routing bench-fencing bench-memory ## Run every benchmark (prints p50/p99 and ratios vs. the peers)

demo: cluster-up ## Local cluster + zen-lead installed with Helm + a controller pool and a worker pool, failover timed
	KUBECONFIG=$(CLUSTER_KUBECONFIG) KUBECTL=$(KUBECTL) DEMO_NAMESPACE=$(DEMO_NAMESPACE) bash examples/demo/run.sh

lint: ## Check formatting and clippy lints
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
