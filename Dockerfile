# ehrstream image: the worker, the sink, the review app and the CLI (ENTRYPOINT ehrstream).
# CPU build by default; the GPU build: docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 EHRSTREAM_DATA_DIR=/app/.ehrstream
COPY pyproject.toml requirements.lock README.md ehrstream.toml ./
COPY schemas ./schemas
COPY streams ./streams
COPY agents ./agents
COPY models ./models
COPY samples ./samples
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
 && pip install -c requirements.lock -e . \
 && useradd --system --uid 10001 --home-dir /app ehrstream \
 && mkdir -p /app/.ehrstream/cache && chown -R ehrstream /app/.ehrstream
USER ehrstream
# 8470: the review app; 9400: /metrics (EHRSTREAM_METRICS_PORT)
EXPOSE 8470 9400
ENTRYPOINT ["ehrstream"]
