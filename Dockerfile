# order-service: the api, outbox-relay and saga-worker binaries (and the customer
# simulator of the demo profile) in one small image, running as a non-root user.

# Dependencies are cached by cargo-chef: `prepare` reduces the workspace to a recipe
# (manifests, lock file, targets), which changes only when a dependency does, and `cook`
# builds the dependencies from it with the same profile and flags as the real build.
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src
ENV CARGO_TERM_COLOR=never

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --workspace --bins --recipe-path recipe.json
# SQL is checked against the committed .sqlx/ (SQLX_OFFLINE, set in .cargo/config.toml):
# no database at build time.
COPY . .
# The commit `--version` and the build_info metric name: `git rev-parse` has no .git here.
ARG ORDER_SERVICE_COMMIT=unknown
RUN cargo build --release --locked --workspace --bins \
    && mkdir /out \
    && cp target/release/api target/release/outbox-relay target/release/saga-worker \
          target/release/customer-simulator /out/

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
