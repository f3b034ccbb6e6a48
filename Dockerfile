# syntax=docker/dockerfile:1
#
# pgwarden's container image: build with the Rust toolchain, run from a
# distroless base as a non-root user. The image holds the pgwarden binary and
# what it links against (glibc, libgcc) plus the CA certificate bundle; there is
# no shell, package manager or HTTP client in it.
#
#   docker build -t pgwarden:dev .
#   docker run --rm pgwarden:dev --help
#
# The configuration is read from /etc/pgwarden/pgwarden.toml by default: mount
# it there (and its certificates and secrets wherever it names them), or give
# another `run --config FILE` as the command.

# The toolchain is at least Cargo.toml's rust-version (tests/deploy_files.rs
# checks it). Bookworm, to match the runtime image's glibc.
FROM rust:1.94.1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the benchmarks; cargo refuses a manifest whose targets are missing.
COPY benches ./benches
# The registry and the target directory are BuildKit caches, so rebuilds after a
# source change do not recompile every dependency. --locked: exactly the
# dependency versions the repository was tested with.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/pgwarden /out/pgwarden

# The backup image (`docker build --target backup`): pgwarden with
# PostgreSQL's client programs, for `pgwarden backup` (docker-compose.yml's
# pgwarden-backup, deploy/kubernetes/backup/). Its pg_dump must be at least
# the server's major version: keep this tag's major with the server's.
FROM postgres:17.9-bookworm AS backup
COPY --from=build /out/pgwarden /usr/local/bin/pgwarden
# Where backups go, owned by the image's postgres user (uid 999), so that a
# fresh named volume mounted there is writable by it.
RUN install -d -o 999 -g 999 -m 0700 /var/lib/pgwarden-backup
USER 999:999
ENTRYPOINT ["pgwarden"]
CMD ["backup", "--help"]

# Distroless publishes this tag as a moving "Debian 12, C runtime, non-root"
# line rather than numbered releases; pin it by digest
# (cc-debian12:nonroot@sha256:…) where builds must be reproducible.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/pgwarden /usr/local/bin/pgwarden
# distroless's "nonroot" user, by number so that Kubernetes' runAsNonRoot can
# verify it and file ownership on mounted volumes is unambiguous.
USER 65532:65532
# 6432: PostgreSQL clients. 9187: admin listener (/metrics, /healthz, /readyz);
# set [admin] address = "0.0.0.0:9187" for it to be reachable from outside.
EXPOSE 6432 9187
# pgwarden drains on SIGTERM (live sessions get [shutdown] grace, then leases
# are revoked within [shutdown] revoke_timeout): give the container more than
# both, e.g. `docker stop -t 60` or compose's stop_grace_period.
STOPSIGNAL SIGTERM
# Readiness of the admin listener: 200 only when the proxy accepts connections
# and every credential source (Vault included) can issue credentials. It
# assumes [admin] on port 9187; override or disable it otherwise.
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
    CMD ["pgwarden", "healthcheck", "--url", "http://127.0.0.1:9187/readyz", "--timeout", "5s"]
ENTRYPOINT ["pgwarden"]
CMD ["run", "--config", "/etc/pgwarden/pgwarden.toml"]
