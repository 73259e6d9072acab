# order-service: the api, outbox-relay and saga-worker binaries (and the customer
# simulator of the demo profile) in one small image, running as a non-root user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never

# 1. Dependencies only, cached until a manifest or the lock file changes: build the
#    workspace with empty sources, with the same flags as the real build below (the
#    example turns on dev-dependencies, and different features would rebuild them).
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY bins/api/Cargo.toml bins/api/
COPY bins/outbox-relay/Cargo.toml bins/outbox-relay/
COPY bins/saga-worker/Cargo.toml bins/saga-worker/
RUN mkdir -p shared/src shared/examples bins/api/src bins/outbox-relay/src bins/saga-worker/src \
    && touch shared/src/lib.rs \
    && echo 'fn main() {}' > shared/build.rs \
    && for b in api outbox-relay saga-worker; do echo 'fn main() {}' > bins/$b/src/main.rs; done \
    && echo 'fn main() {}' > shared/examples/customer_simulator.rs \
    && echo 'fn main() {}' > shared/examples/saga_reply.rs \
    && cargo build --release --locked --workspace --bins --example customer_simulator \
    && rm -rf shared bins

# 2. The sources. SQL is checked against the committed .sqlx/ (SQLX_OFFLINE, set in
#    .cargo/config.toml): no database at build time.
COPY .cargo .cargo
COPY .sqlx .sqlx
COPY migrations migrations
COPY shared shared
COPY bins bins
# COPY keeps the files' own times, which can be older than the placeholders built
# above: touch them so cargo rebuilds our crates.
RUN find shared bins -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --workspace --bins --example customer_simulator \
    && mkdir /out \
    && cp target/release/api target/release/outbox-relay target/release/saga-worker /out/ \
    && cp target/release/examples/customer_simulator /out/customer-simulator

FROM debian:bookworm-slim AS runtime
# curl serves the container health checks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin orders
COPY --from=build /out/ /usr/local/bin/
USER orders
ENV LOG_FORMAT=json
EXPOSE 8000 9101 9102
CMD ["api"]
