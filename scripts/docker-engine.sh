#!/usr/bin/env bash
# A Docker engine and Compose v2 for the compose tests, installed from what answers on a machine without
# an image registry: Debian's docker.io and debootstrap (apt), Compose v2 built with Go from the module
# proxy. Idempotent; whatever already works is kept.
#   scripts/docker-engine.sh start   # install what is missing, start dockerd unless an engine answers
#   scripts/docker-engine.sh stop    # stop the dockerd that `start` started (by its recorded PID)
set -euo pipefail

COMPOSE_VERSION=v2.40.3
COMPOSE_MODULE=github.com/docker/compose/v2
STATE=${BATON_DOCKER_STATE:-$HOME/.cache/baton/docker}
PLUGIN=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose

log() { echo "== docker-engine: $*"; }

install_packages() {
    local need=()
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    [ ${#need[@]} -eq 0 ] && return
    if [ "$(id -u)" != 0 ]; then
        echo "docker-engine: need root to apt-get install ${need[*]}" >&2
        exit 1
    fi
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# Compose v2 (`up --wait` needs it). `go install` refuses its go.mod (exclude directives), so the module
# is downloaded and built in place; the binary is the CLI plugin, reused until the version changes.
install_compose() {
    if docker compose version 2>/dev/null | grep -q "${COMPOSE_VERSION#v}"; then
        return
    fi
    command -v go >/dev/null || { echo "docker-engine: Go is needed to build Compose" >&2; exit 1; }
    log "building Compose $COMPOSE_VERSION with Go (minutes, once)"
    local start dir
    start=$(date +%s)
    mkdir -p "$STATE"
    dir=$(go mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    mkdir -p "$(dirname "$PLUGIN")"
    (cd "$dir" && CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" -o "$PLUGIN" ./cmd) \
        >"$STATE/compose-build.log" 2>&1 || { tail -30 "$STATE/compose-build.log" >&2; exit 1; }
    log "Compose built in $(( $(date +%s) - start ))s: $(docker compose version)"
}

start_engine() {
    if docker info >/dev/null 2>&1; then
        log "a Docker engine already answers; not starting another"
        rm -f "$STATE/dockerd.pid"  # so that `stop` never stops an engine this run did not start
        return
    fi
    mkdir -p "$STATE"
    log "starting dockerd (log: $STATE/dockerd.log)"
    nohup dockerd >"$STATE/dockerd.log" 2>&1 &
    echo $! >"$STATE/dockerd.pid"
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && { log "dockerd is up (pid $(cat "$STATE/dockerd.pid"))"; return; }
        sleep 1
    done
    tail -20 "$STATE/dockerd.log" >&2
    echo "docker-engine: dockerd did not answer within 60s" >&2
    exit 1
}

stop_engine() {
    [ -f "$STATE/dockerd.pid" ] || { log "no dockerd started by this script"; return; }
    local pid
    pid=$(cat "$STATE/dockerd.pid")
    rm -f "$STATE/dockerd.pid"
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || { log "dockerd $pid stopped"; return; }; sleep 1; done
    kill -9 "$pid" 2>/dev/null || true
}

case "${1:-start}" in
    start) install_packages; install_compose; start_engine ;;
    stop) stop_engine ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
