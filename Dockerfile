# syntax=docker/dockerfile:1
# Multi-arch by construction: the builder runs on the build machine's platform and
# cross-compiles a static musl binary for $TARGETARCH; the final image holds only that binary.
#   docker buildx build --platform linux/amd64,linux/arm64 -t archwatch:dev .
FROM --platform=$BUILDPLATFORM rust:1-bookworm AS build
ARG TARGETARCH
ARG BUILDARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates protobuf-compiler clang musl-tools gcc-aarch64-linux-gnu gcc-x86-64-linux-gnu \
 && rm -rf /var/lib/apt/lists/*
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
# Rust's own lld links the self-contained musl targets; the only C linked in (ring, for TLS to
# the API server) is compiled by musl-gcc natively or by the Debian cross compiler. clang
# compiles the exec tracer's eBPF program (build.rs), the same object for both targets.
ENV CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
WORKDIR /src
COPY . .
RUN if [ "$BUILDARCH" = amd64 ]; then export CC_x86_64_unknown_linux_musl=musl-gcc; \
    else export CC_x86_64_unknown_linux_musl=x86_64-linux-gnu-gcc; fi \
 && cargo build --release --locked --no-default-features --target "$(cat /rust-target)" \
 && cp "target/$(cat /rust-target)/release/archwatch" /archwatch
# An empty, world-writable, sticky directory for the final image's /tmp: `archwatch verify`
# fetches a registry image into a temporary directory, and scratch has none.
RUN mkdir -m 1777 /image-tmp

FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/archwatch/archwatch
LABEL org.opencontainers.image.title="archwatch" \
      org.opencontainers.image.description="Explains exec format error and its cousins on every node" \
      org.opencontainers.image.source="$SOURCE" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /archwatch /archwatch
# The builder's (Debian's) CA bundle: without it `archwatch verify` cannot check any HTTPS
# registry's certificate. reqwest's rustls-platform-verifier loads the system roots through
# rustls-native-certs, whose openssl-probe looks first at this very path ($SSL_CERT_FILE, when
# set, replaces it: a bundle of your own).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /image-tmp /tmp
# Root (uid 0) is needed to read other users' files in containerd's snapshots; the DaemonSet
# drops every capability but DAC_READ_SEARCH, SYS_PTRACE and SYS_ADMIN and mounts the root
# filesystem read-only.
ENTRYPOINT ["/archwatch"]
CMD ["agent"]
