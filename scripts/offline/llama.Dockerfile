# Stand-in for ghcr.io/ggml-org/llama.cpp:server (the compose `model` service, profile llm): llama.cpp
# through llama-cpp-python's OpenAI-compatible server, from the wheel `make llm` built on this machine
# (scripts/images-offline.sh), the same build as the host's own model server. The wheel's sha256 is a
# label: images-offline rebuilds the image when `make llm` has built another wheel.
ARG BASE=python:3.11-slim
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY wheels/ /tmp/wheels/
RUN pip install --no-cache-dir --find-links /tmp/wheels "llama-cpp-python[server]==0.3.36" \
    && rm -rf /tmp/wheels
COPY llama-server.sh /usr/local/bin/llama-server
EXPOSE 8080
HEALTHCHECK --interval=2s --timeout=5s --retries=60 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v1/models', timeout=3)"]
ARG WHEEL_SHA=unknown
LABEL org.baton.stand-in="llama.cpp server from llama-cpp-python" org.baton.wheel-sha256="${WHEEL_SHA}"
ENTRYPOINT ["llama-server"]
