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

# Pinned by digest: a tag can be moved to other content, a digest cannot. This is the
# python:3.11-slim index digest found in public Dockerfiles that build from it (two independent
# projects, one through the public.ecr.aws mirror); this repo's machines cannot reach a
# registry, so refresh and re-check it where one is reachable:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
# tests/unit/test_supply_chain.py refuses any FROM without a digest.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# ---- build: wheel + virtual environment ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Every package comes from a lock file with hashes (uv pip compile --generate-hashes): pip
# refuses anything unpinned, unhashed or different from what was locked. The build backend is
# locked too and used without build isolation, which would fetch it unpinned.
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/venv \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps -r requirements-build.lock \
 && /opt/venv/bin/pip install --require-hashes -r requirements.lock
# Only what the wheel is made of (pyproject.toml names README.md and LICENSE; setup.py copies
# the schemas, models and example config into the package).
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE scorer.example.toml ./
COPY schemas/ schemas/
COPY models/ models/
COPY stream_scorer/ stream_scorer/
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/stream_scorer-*.whl \
 && /opt/venv/bin/pip check \
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
