# radnode production image. The base carries the CUDA runtime so the node uses a GPU when the host
# gives it one (docker run --gpus all); without one it runs on the CPU. PyPI's torch wheel for
# Linux (the version pinned in pyproject.toml) includes its CUDA libraries.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --uid 10001 radnode \
    && mkdir -p /var/lib/radnode /etc/radnode \
    && chown radnode /var/lib/radnode

WORKDIR /opt/radnode
COPY pyproject.toml README.md ./
COPY node ./node
COPY pipelines ./pipelines
COPY storage ./storage
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .

COPY deploy/radnode.toml /etc/radnode/config.toml
ENV PATH=/opt/venv/bin:$PATH \
    RADNODE_CONFIG=/etc/radnode/config.toml

USER 10001
VOLUME ["/var/lib/radnode"]
EXPOSE 11112
HEALTHCHECK --interval=30s --timeout=5s CMD ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 11112), 3)"]
ENTRYPOINT ["radnode"]
CMD ["serve"]
