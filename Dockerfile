# syntax=docker/dockerfile:1
#
# zen-lead image: two static binaries (musl) on a minimal non-root base:
# zen-lead (everything) and zen-lead-pod (what a pool pod runs).
#   docker build --build-arg ZEN_LEAD_GIT_COMMIT="$(git rev-parse --short=12 HEAD)" -t zen-lead .
# The build context has no .git (see .dockerignore), so the commit is passed in;
# build.rs falls back to "unknown" without it.
#
# Base images are pinned by version tag. Pin them by digest too when
# publishing (`FROM image:tag@sha256:...`): the digest decides which bytes are
# used, the tag says what they are. (No digest is written here because none
# could be verified against the registries from the development machines.)
#
# The same layout is built for the local test cluster by
# tests/cluster/images.sh; tests/image_layout.rs keeps the two in step
# (binary path, user, entrypoint).

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-alpine AS build
# ring compiles a little C and assembly; musl-dev provides the headers. Its
# version follows the pinned base image's Alpine release.
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev
WORKDIR /src
# Rust's musl target links statically by default (no RUSTFLAGS: forcing
# crt-static on the host target would break proc-macro crates).

# Dependencies first, with a placeholder crate, so this layer is reused while
# only src/ changes. Cargo.toml names the benchmark targets, so their files
# must exist for the manifest to parse (they are not built).
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches ./benches
RUN mkdir -p src/bin \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/zen-lead-pod.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/.fingerprint/zen-lead-* target/release/deps/zen_lead-* \
           target/release/deps/zen_lead_pod-* target/release/deps/libzen_lead-* \
           target/release/zen-lead target/release/zen-lead-pod

ARG ZEN_LEAD_GIT_COMMIT=unknown
ENV ZEN_LEAD_GIT_COMMIT=${ZEN_LEAD_GIT_COMMIT}
COPY src ./src
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/zen-lead /out/zen-lead \
 && install -D -m 0755 target/release/zen-lead-pod /out/zen-lead-pod \
 && /out/zen-lead version \
 && /out/zen-lead-pod version

# distroless static: CA certificates, /etc/passwd with "nonroot", no shell or
# package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/zen-lead /usr/local/bin/zen-lead
# The per-pod binary the injected agent runs (src/contract.rs AGENT_COMMAND).
COPY --from=build /out/zen-lead-pod /usr/local/bin/zen-lead-pod
# distroless "nonroot": uid/gid 65532.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/zen-lead"]
