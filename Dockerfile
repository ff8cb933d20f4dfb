# syntax=docker/dockerfile:1
# One image recipe for all five Tollgate services; SERVICE picks which one. The build context is the repository
# root (the uv workspace):
#   docker build --build-arg SERVICE=router -t tollgate-router .
#   for svc in ingress router policy billing metering; do docker build --build-arg SERVICE=$svc -t tollgate-$svc .; done
# Only that service and what it depends on (per uv.lock) end up in the image; the protobuf code is generated from
# proto/ here, exactly as `make proto` does, because generated code is never committed. The proto step comes before
# SERVICE is declared, so the five builds share its cached layer.
#
# Listening: every image sets all the services' host variables (INGRESS_HOST, <PREFIX>_GRPC_HOST) to 0.0.0.0,
# because a container must listen on its pod/bridge address, not on loopback (the code defaults ingress and router to
# 127.0.0.1 for laptops). Each service reads only its own prefix, so the other four are inert; the Helm chart sets the
# same values explicitly anyway. No EXPOSE: Dockerfile instructions cannot map SERVICE to a port, and a wrong or
# all-ports EXPOSE would mislead `docker run -P`. The ports are in docs/architecture.md (ingress HTTP 8080, router
# 50051, policy 50052, billing 50053, metering 50054); the chart declares its containerPorts itself.

ARG PYTHON_IMAGE=python:3.11-slim
# Same uv as the Makefile pins, so the lock file is read by the version that wrote it.
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY proto ./proto
COPY libs ./libs
COPY services ./services

# `make proto`: protoc from the grpcio-tools version uv.lock pins (dev group), into libs/tollgate-proto/src.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv export --frozen --only-group dev --no-emit-workspace --no-hashes --quiet --output-file /tmp/dev-pins.txt \
    && uv venv --quiet /opt/protoc \
    && uv pip install --quiet --python /opt/protoc/bin/python --constraint /tmp/dev-pins.txt grpcio-tools \
    && out=libs/tollgate-proto/src \
    && find "$out/tollgate" -mindepth 1 -not -path "$out/tollgate/__init__.py" -delete \
    && /opt/protoc/bin/python -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" \
        --grpc_python_out="$out" $(find proto -name '*.proto' | sort) \
    && find "$out/tollgate" -mindepth 1 -type d -exec touch {}/__init__.py \;

# Which service: a directory under services/ holding the package tollgate_<name>. Checked against the tree rather
# than a list here, so a new service needs no edit of this file; anything else stops the build with the choices.
ARG SERVICE
RUN case "$SERVICE" in \
        "" | *[!a-z0-9_]*) ok=no ;; \
        *) if [ -d "services/$SERVICE/src/tollgate_$SERVICE" ]; then ok=yes; else ok=no; fi ;; \
    esac; \
    if [ "$ok" != yes ]; then \
        echo "ERROR: --build-arg SERVICE='$SERVICE' is not a Tollgate service. Use one of:" \
             $(cd services && ls -d */src/tollgate_* | cut -d/ -f1) >&2; \
        exit 1; \
    fi

# The service and its locked dependencies, installed (not editable) into /app/.venv, and the operators' `tollgate`
# command (tollgate-ops: replay, reconcile, rerate, audit, status) so every image can run it as a Kubernetes Job.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "tollgate-$SERVICE" --package tollgate-ops

FROM ${PYTHON_IMAGE}
ARG SERVICE
RUN groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin tollgate
COPY --from=build /app/.venv /app/.venv
# var/ is where the default SQLite URLs point (relative to /app); in Kubernetes it is an emptyDir or unused.
RUN install -d -o 10001 -g 10001 /app/var
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TOLLGATE_SERVICE=${SERVICE} \
    INGRESS_HOST=0.0.0.0 \
    ROUTER_GRPC_HOST=0.0.0.0 \
    POLICY_GRPC_HOST=0.0.0.0 \
    BILLING_GRPC_HOST=0.0.0.0 \
    METERING_GRPC_HOST=0.0.0.0
WORKDIR /app
# Numeric, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
# Exec form cannot expand a variable, so sh expands TOLLGATE_SERVICE and then `exec`s: python replaces the shell as
# PID 1 and receives SIGTERM itself (graceful stop).
CMD ["sh", "-c", "exec python -m \"tollgate_${TOLLGATE_SERVICE}\""]
