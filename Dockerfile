# ehrstream image: the worker, the sink and the CLI. First version; issue 7 adds the GPU build and healthchecks.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY pyproject.toml requirements.lock README.md ehrstream.toml ./
COPY schemas ./schemas
COPY streams ./streams
COPY agents ./agents
COPY models ./models
COPY samples ./samples
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -c requirements.lock -e .
ENTRYPOINT ["ehrstream"]
