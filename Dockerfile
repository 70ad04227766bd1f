# One image with every Slipway binary; docker-compose.yml runs each service from it.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace \
    && mkdir /out \
    && cp target/release/deploy-orchestrator target/release/deployment-actor \
          target/release/routing target/release/krane-agent target/release/slipway \
          target/release/edge /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# krane-agent runs `exec:` images as local processes, `slipway demo-app` among them.
ENV SLIPWAY_AGENT_STATE_DIR=/var/lib/slipway-agent
