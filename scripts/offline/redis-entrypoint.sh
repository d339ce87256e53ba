#!/bin/sh
# The official image's entry point, as far as docker-compose.yml uses it: `redis-server` listens on
# every interface without protected mode (the official build compiles that default in).
set -e
case "$1" in -*|*.conf) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ]; then
    shift
    set -- redis-server "$@" --protected-mode no
fi
exec "$@"
