# shardmq in a container: a static-enough release binary on a slim Debian base.
#   docker build -t shardmq .
#   docker run --rm -p 1883:1883 -p 8083:8083 -p 9183:9183 -v shardmq-data:/data shardmq
# io_uring inside containers: Docker's default seccomp profile blocks io_uring_setup on
# recent versions; shardmq then falls back to epoll and logs "epoll". For io_uring run with
# --security-opt seccomp=unconfined (or a profile that allows io_uring_*). Pinning uses the
# container's CPU set (docker run --cpuset-cpus 0-3 gives it four shards).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin shardmq

FROM debian:bookworm-slim
RUN useradd --system --uid 1883 --home /data shardmq && mkdir -p /data /etc/shardmq \
    && chown shardmq /data
COPY --from=build /src/target/release/shardmq /usr/local/bin/shardmq
COPY packaging/docker.toml /etc/shardmq/shardmq.toml
USER shardmq
VOLUME /data
EXPOSE 1883 8083 9183
STOPSIGNAL SIGTERM
# /health answers 200 while the broker serves (bash's /dev/tcp: the slim image has no curl).
HEALTHCHECK --interval=10s --timeout=3s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9183 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/shardmq", "--config", "/etc/shardmq/shardmq.toml", "--data-dir", "/data"]
