# Tessera: a multi-stage image. The builder compiles the release binary; the runtime is Debian
# slim with a non-root user and two volumes, /var/lib/tessera/data (SQLite) and
# /var/lib/tessera/keys (this replica's private signing keys, mode 0600).
#
# Note: this image is not built here. The development machines have no Docker engine, so this
# file is an example kept in step with docs/operations.md by hand, not something CI checks.
#
#   docker build -t tessera .
#   docker run -p 8700:8700 -e TESSERA_ISSUER=https://tessera.example.com \
#     -v tessera-data:/var/lib/tessera/data -v tessera-keys:/var/lib/tessera/keys tessera

FROM rust:1-slim-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
RUN cargo build --release --locked --bin tessera

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid tessera --home-dir /var/lib/tessera --shell /usr/sbin/nologin tessera \
 && install -d -o tessera -g tessera -m 0700 /var/lib/tessera /var/lib/tessera/data /var/lib/tessera/keys
COPY --from=builder /src/target/release/tessera /usr/local/bin/tessera

USER tessera:tessera
WORKDIR /var/lib/tessera
ENV TESSERA_LISTEN=0.0.0.0:8700 \
    TESSERA_DATABASE_URL=sqlite:///var/lib/tessera/data/tessera.db \
    TESSERA_KEYS_DIR=/var/lib/tessera/keys \
    TESSERA_LOG_FORMAT=json
VOLUME ["/var/lib/tessera/data", "/var/lib/tessera/keys"]
EXPOSE 8700
# The broker drains in-flight requests on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve"]
