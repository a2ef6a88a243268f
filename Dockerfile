# One image for both processes: the API (default CMD) and the worker (`sse-relay worker`, compose's command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# A fixed, unprivileged uid so volume permissions and `USER` do not depend on build order.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

WORKDIR /app

# README.md is referenced by pyproject's `readme`, so setuptools refuses to build without it.
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY cli ./cli
COPY demo ./demo
COPY sse_relay ./sse_relay

# Installed as root into the system site-packages; the app user only needs to read it. With the OpenTelemetry
# extra: tracing is then one environment variable away (OTEL_EXPORTER_OTLP_ENDPOINT), and off without it.
RUN pip install --no-cache-dir ".[otel]" \
    && chown -R app:app /app

USER app

EXPOSE 8000

# Short graceful-shutdown window: open SSE streams are resumable (Last-Event-ID), so clients reconnect
# to another replica instead of holding the container in shutdown.
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "10"]
