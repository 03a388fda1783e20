# kvtier images: kvtierd, the kvtier CLI and the cluster index kvtier-index,
# on Debian 12.
#   docker build -t kvtier:0.1.0 .
# The runtime stage's packages are pinned to the Debian 12.11 versions the
# build links against; bump them together with the base image tag.

ARG DEBIAN_TAG=12.11-slim

# ---- build ------------------------------------------------------------------
FROM debian:${DEBIAN_TAG} AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config git ca-certificates \
      libabsl-dev libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc \
      libucx-dev liburing-dev libxxhash-dev libyaml-cpp-dev prometheus-cpp-dev \
      libhiredis-dev nlohmann-json3-dev libcurl4-openssl-dev libssl-dev \
      libnats-dev libzmq3-dev libmsgpack-cxx-dev nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# npm first (package.json pins uPlot), so source edits keep this layer.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVTIER_CUDA=OFF \
      -DKVTIER_BUILD_TESTS=OFF -DKVTIER_PYTHON=OFF -DCMAKE_INSTALL_PREFIX=/opt/kvtier \
    && cmake --build /build -j"$(nproc)" \
    && cmake --install /build --strip \
    && ls /opt/kvtier/bin

# ---- runtime ----------------------------------------------------------------
FROM debian:${DEBIAN_TAG}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates=20230311+deb12u1 \
      tini=0.19.0-1+b3 \
      libabsl20220623=20220623.1-1+deb12u2 \
      libc-ares2=1.18.1-3 \
      libcurl4=7.88.1-10+deb12u15 \
      libgrpc++1.51=1.51.1-3+b1 \
      libgrpc29=1.51.1-3+b1 \
      libhiredis0.14=0.14.1-3 \
      libnats3.4=3.4.1-1+b1 \
      libprometheus-cpp-core1.0=1.0.1-1 \
      libprotobuf32=3.21.12-3+deb12u1 \
      libre2-9=20220601+dfsg-1+b1 \
      libssl3=3.0.19-1~deb12u2 \
      libucx0=1.13.1-1 \
      liburing2=2.3-3 \
      libxxhash0=0.8.1-1 \
      libyaml-cpp0.7=0.7.0+dfsg-8+b1 \
      libzmq5=4.3.4-6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kvtier \
    && useradd --system --uid 10001 --gid kvtier --home-dir /var/lib/kvtier \
         --shell /usr/sbin/nologin kvtier \
    && install -d -o kvtier -g kvtier -m 0750 /var/lib/kvtier /run/kvtier
COPY --from=build /opt/kvtier/bin/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/kvtier
# gRPC over TCP, and HTTP (/, /api/v1/status, /metrics, /healthz, /readyz).
EXPOSE 50051 9464
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["/usr/local/bin/kvtierd", "--config", "/etc/kvtier/config/kvtierd.yaml"]
