# jobsd: one image for every role (`serve`, `gateway`, `worker`, `token create`).
# Build: docker build -t jobsd .      Run alone (embedded SQLite store in the volume): docker run -p 8080:8080 jobsd

# -- builder: install jobsd and its dependencies into a self-contained virtual environment
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/jobsd
WORKDIR /src
# Only what the package build reads: the metadata and the two source trees.
COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
# The SDK (jobsd-client) from its own folder, then the server that depends on it.
RUN /opt/jobsd/bin/pip install --upgrade pip && /opt/jobsd/bin/pip install ./clients/python .

# -- final: the virtual environment on a clean slim image, run by an unprivileged user
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/jobsd jobsd
COPY --from=builder /opt/jobsd /opt/jobsd
# Listen on every interface inside the container; the store defaults to SQLite in the volume (compose sets MongoDB).
ENV PATH=/opt/jobsd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JOBSD_GRPC_ADDR=0.0.0.0:50051 \
    JOBSD_HTTP_ADDR=0.0.0.0:8080 \
    JOBSD_STORE=sqlite:////var/lib/jobsd/jobsd.db \
    JOBSD_DATA_DIR=/var/lib/jobsd/data
USER jobsd
WORKDIR /var/lib/jobsd
VOLUME ["/var/lib/jobsd"]
EXPOSE 50051 8080
# Healthy while grpc.health.v1 answers SERVING (jobsd answers NOT_SERVING while its store is unreachable).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD python -c "import os,sys,grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; port=os.environ.get('JOBSD_GRPC_ADDR','0.0.0.0:50051').rsplit(':',1)[-1]; r=g.HealthStub(grpc.insecure_channel('127.0.0.1:'+port)).Check(h.HealthCheckRequest(), timeout=3); sys.exit(r.status != h.HealthCheckResponse.SERVING)"
ENTRYPOINT ["jobsd"]
CMD ["serve"]
