# syntax=docker/dockerfile:1
# stream-scorer image: build a wheel, install it with its dependencies into a virtual
# environment, and copy only that environment, the schemas and the models into a slim runtime.
#
#   docker build -t stream-scorer .
#   docker run --rm -p 9400:9400 \
#     -e STREAM_SCORER_KAFKA__BOOTSTRAP_SERVERS=broker:9092 \
#     -e STREAM_SCORER_SCHEMA__REGISTRY_URL=http://registry:8081 stream-scorer
#
# The default config (/app/scorer.toml) is scorer.example.toml, i.e. the built-in defaults; mount
# your own over it or override any key with STREAM_SCORER_<SECTION>__<KEY>.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: wheel + virtual environment ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is made of (pyproject.toml names README.md and LICENSE; setup.py copies
# the schemas, models and example config into the package).
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE scorer.example.toml ./
COPY schemas/ schemas/
COPY models/ models/
COPY stream_scorer/ stream_scorer/
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /wheels/stream_scorer-*.whl \
 && /opt/venv/bin/stream-scorer --version

# ---- runtime -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="stream-scorer" \
      org.opencontainers.image.description="Score Avro events from Kafka with an ONNX model; publish the flagged ones." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed, non-root uid/gid so Kubernetes runAsNonRoot and file ownership are predictable.
RUN groupadd --system --gid 10001 scorer \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app \
            --shell /usr/sbin/nologin scorer

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# Relative paths in the settings (schemas/..., models/fraud/1) resolve against /app.
COPY schemas/ /app/schemas/
COPY models/ /app/models/
COPY scorer.example.toml /app/scorer.toml

USER 10001:10001

# /metrics, /healthz, /readyz
EXPOSE 9400

# slim has no curl: ask /healthz with the interpreter (an HTTP 503 raises, so the check fails).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=2).status == 200 else 1)"]

# SIGTERM stops the service cleanly: the current batch is finished, flushed and committed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["stream-scorer"]
CMD ["run", "--config", "/app/scorer.toml"]
