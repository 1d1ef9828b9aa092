# The Lodge host. Build: docker build -t lodge .
# Run:   docker run -p 3000:3000 -v lodge-data:/var/lib/lodge \
#          -e LODGE_ADMIN_TOKEN=… -e LODGE_MASTER_KEY=… lodge
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p lodge-host --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/lodge --create-home lodge
COPY --from=build /src/target/release/lodge /usr/local/bin/lodge
COPY lodge.toml /etc/lodge/lodge.toml
USER lodge
ENV LODGE_LISTEN=0.0.0.0:3000 \
    LODGE_DATA_DIR=/var/lib/lodge \
    LODGE_CONFIG=/etc/lodge/lodge.toml \
    LODGE_LOG_FORMAT=json
EXPOSE 3000
VOLUME /var/lib/lodge
ENTRYPOINT ["/usr/local/bin/lodge", "serve"]
