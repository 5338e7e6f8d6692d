# syntax=docker/dockerfile:1
# The operator image, for users with Docker:
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t ghcr.io/featureenv/featureenv-operator:0.1.0 .
# `make image` builds the same image without a Docker daemon (hack/image.sh), and
# tests/image checks that this file and that image agree on user, entrypoint, command,
# port and labels.

# The binary links glibc dynamically (no musl toolchain in this project's builds), so the
# builder and the runtime share one Debian release: bookworm's glibc in both.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Only what `cargo build --bin featureenv-operator` reads; the manifest names the example
# hack/control-plane.rs, so it must exist for Cargo to load the manifest.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY hack/control-plane.rs ./hack/control-plane.rs
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin featureenv-operator \
    && cp target/release/featureenv-operator /featureenv-operator

# distroless cc: glibc, libgcc_s, CA certificates, /etc/passwd with nonroot (65532), no
# shell. Pinned by tag only: its digest could not be fetched where this file was written;
# pin `@sha256:...` when you build for a release.
FROM gcr.io/distroless/cc-debian12:nonroot

# Keep in step with Cargo.toml's version (tests/image checks it).
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="featureenv-operator" \
      org.opencontainers.image.description="Kubernetes operator that provisions private full-stack feature environments on EC2 and RDS" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/featureenv/featureenv-operator" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /featureenv-operator /featureenv-operator
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# /metrics, /healthz and /readyz (--http-addr, the chart's service.port).
EXPOSE 8080
ENTRYPOINT ["/featureenv-operator"]
# The chart passes `args: ["run"]` too; this default makes `docker run IMAGE` start it.
CMD ["run"]
