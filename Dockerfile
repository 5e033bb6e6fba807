# syntax=docker/dockerfile:1
# A small image running dsyncd as a non-root user. Queries are checked against the committed
# .sqlx/ data, so the build needs no database.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dsyncd \
    && cp target/release/dsyncd /usr/local/bin/dsyncd

# glibc and libgcc, nothing else: no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/dsyncd /usr/local/bin/dsyncd
COPY config.example.toml /etc/dsyncd/config.example.toml
USER nonroot:nonroot
ENV DSYNCD_LISTEN=0.0.0.0:8080 DSYNCD_LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["/usr/local/bin/dsyncd", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/dsyncd"]
CMD ["serve"]
