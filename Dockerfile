# syntax=docker/dockerfile:1
# Charging server image. Redis is external: set CHARGING_REDIS_URL (for example
# redis://:password@redis:6379/0). Without it the image would need its own
# redis-server, which a container should not hide. PostgreSQL likewise: set
# CHARGING_DATABASE_URL and run `charging migrate` once before the servers start.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY charging ./charging
COPY provisioning ./provisioning
COPY postpaid ./postpaid
RUN pip install --no-cache-dir "grpcio-tools>=1.66,<2" \
 && python -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. protos/charging/v1/*.proto \
 && touch charging/v1/__init__.py \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# DejaVu: invoice PDFs print names in Latin, Greek and Cyrillic scripts.
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app charging
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /app
ENV CHARGING_GRPC_ADDRESS=0.0.0.0:50051 \
    CHARGING_METRICS_ADDRESS=0.0.0.0:9464 \
    PYTHONUNBUFFERED=1
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c=grpc.insecure_channel('127.0.0.1:50051'); s=g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=2).status; sys.exit(0 if s == h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["charging"]
CMD ["serve"]
