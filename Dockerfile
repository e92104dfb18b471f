# syntax=docker/dockerfile:1
# Charging server image. Redis is external: set CHARGING_REDIS_URL (for example
# redis://:password@redis:6379/0). Without it the image would need its own
# redis-server, which a container should not hide. PostgreSQL likewise: set
# CHARGING_DATABASE_URL and run `charging migrate` once before the servers start.
#
# It runs secured: mount a directory with the server's certificate and key, the CA of the
# machine callers' certificates, the policy, and a certificate the health check presents
# (any certificate the CA signed; health answers every authenticated handshake):
#   /certs/server.pem /certs/server.key /certs/ca.pem /certs/policy.json
#   /certs/monitor.pem /certs/monitor.key
# `charging certs --dir certs --host <the name clients use>` writes such a directory for
# trying it out, e.g.
#   docker run -v "$PWD/certs:/certs:ro" -e CHARGING_REDIS_URL=... -p 50051:50051 charging
# Certificates renewed in the mounted directory are used from the next connection on.
# The keys must be readable by the image's user (uid 10001), and by nobody else.
# Callers with bearer tokens instead of certificates: set CHARGING_GRPC_TOKEN_ADDRESS
# (e.g. 0.0.0.0:50052, TLS without client certificates) and publish that port.
# Running it unsecured (CHARGING_INSECURE=true, no certificates) also needs the
# CHARGING_CLIENT_TLS_* variables set empty, or the health check cannot read its files.
# The compiled gRPC door (door/, README "The compiled gRPC door"), built against Debian
# 12's gRPC C++ library (python:3.11-slim is Debian 12): the image serves gRPC through it,
# the workers behind it on Unix sockets (CHARGING_GRPC_DOOR below; empty it to have the
# workers serve gRPC themselves).
FROM python:3.11-slim AS door
RUN apt-get update && apt-get install -y --no-install-recommends g++ pkg-config libgrpc++-dev \
 && rm -rf /var/lib/apt/lists/*
COPY door/grpc_door.cc /src/door/grpc_door.cc
RUN g++ -O2 -std=c++17 -Wall -Wextra -Werror -o /charging-grpc-door /src/door/grpc_door.cc \
      $(pkg-config --cflags --libs grpc++)

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY charging ./charging
COPY provisioning ./provisioning
COPY postpaid ./postpaid
COPY console ./console
RUN pip install --no-cache-dir "grpcio-tools>=1.66,<2" \
 && python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. protos/charging/v1/*.proto \
 && touch charging/v1/__init__.py \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# DejaVu: invoice PDFs print names in Latin, Greek and Cyrillic scripts.
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core libgrpc++1.51 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app charging
COPY --from=door /charging-grpc-door /usr/local/bin/charging-grpc-door
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /app
ENV CHARGING_GRPC_ADDRESS=0.0.0.0:50051 \
    CHARGING_METRICS_ADDRESS=0.0.0.0:9464 \
    CHARGING_TLS_CERT=/certs/server.pem \
    CHARGING_TLS_KEY=/certs/server.key \
    CHARGING_TLS_CLIENT_CA=/certs/ca.pem \
    CHARGING_POLICY_FILE=/certs/policy.json \
    CHARGING_CLIENT_TLS_CA=/certs/ca.pem \
    CHARGING_CLIENT_TLS_CERT=/certs/monitor.pem \
    CHARGING_CLIENT_TLS_KEY=/certs/monitor.key \
    CHARGING_GRPC_DOOR=/usr/local/bin/charging-grpc-door \
    PYTHONUNBUFFERED=1
EXPOSE 50051 50052 9464
# Over mutual TLS with the CHARGING_CLIENT_TLS_* files above; "localhost" is a name of
# the server certificate (`charging certs` always includes it and 127.0.0.1).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["charging", "--target", "localhost:50051", "health", "--timeout", "2"]
ENTRYPOINT ["charging"]
CMD ["serve"]
