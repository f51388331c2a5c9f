# lookalike: one image for every role (worker, ingest, search, flower, metrics); the command picks the role.
#
#   docker build -t lookalike .
#   docker run --rm lookalike --help
#   docker run --rm -e LOOKALIKE_BROKER_URL=redis://redis-host:6379/0 \
#       -e LOOKALIKE_QDRANT_URL=http://qdrant-host:6333 -v lookalike-models:/models lookalike worker
#
# Mount points (created here, owned by the non-root user, so a fresh named volume inherits that owner):
#   /app/data  the working directory's ./data: embedded store and embedded broker when no servers are set
#   /models    fastembed's model cache (LOOKALIKE_MODEL_CACHE_DIR), so workers do not download the model
#              again on every start
# See docker-compose.yml for a complete deployment (Redis, Qdrant, N workers, Flower, metrics).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build from a scratch directory and drop it afterwards: only the installed package stays in the image.
# pyproject.toml maps these folders onto the `lookalike` package; README.md is its declared readme.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cli/ cli/
COPY config/ config/
COPY producer/ producer/
COPY state/ state/
COPY api/ api/
COPY app/ app/
COPY worker/ worker/
COPY testing/ testing/
RUN pip install . \
    && cd / \
    && rm -rf /src \
    && lookalike --help > /dev/null

RUN useradd --create-home --uid 10001 --user-group lookalike \
    && mkdir -p /app/data /models \
    && chown lookalike:lookalike /app/data /models

ENV LOOKALIKE_MODEL_CACHE_DIR=/models

WORKDIR /app
USER lookalike

ENTRYPOINT ["lookalike"]
CMD ["worker"]
