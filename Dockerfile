# authsvc: Supabase token verification over gRPC, for Fly.io.
#
# Stage 1 builds the wheel (which generates the gRPC stubs from protos/) and
# installs it into a virtualenv; stage 2 copies only that virtualenv, so the
# build tools (grpcio-tools, setuptools) never reach the runtime image.

# Both stages must use the same base: the venv's python is a symlink into
# the base image's /usr/local/bin.
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Only what the package build needs. setup.py writes the generated stubs into
# authsvc/v1/ here; a stale local copy of them is simply overwritten.
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY authsvc/ authsvc/

# The build requirements (setuptools, grpcio-tools) come from pyproject's
# [build-system] and are installed in pip's isolated build environment.
RUN pip wheel --no-cache-dir --no-deps -w /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl


FROM python:3.11-slim-bookworm

# A fixed uid/gid, so file ownership and policies do not depend on build order.
RUN groupadd --system --gid 10001 authsvc \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin authsvc

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

USER 10001:10001

# gRPC (plain HTTP/2), reached privately as <app>.internal:50051; and the
# operations port: /metrics, /healthz, /readyz for Fly's checks and scraper.
EXPOSE 50051 9091

# No STOPSIGNAL: Fly sends fly.toml's kill_signal, and authsvc drains on both
# SIGINT and SIGTERM. Exec form keeps authsvc as PID 1 so it gets the signal.
CMD ["authsvc", "serve"]
