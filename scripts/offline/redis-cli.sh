#!/bin/bash
# Stand-in redis-cli: only `redis-cli [-h host] [-p port] ping` (the compose health check), logging in
# with REDISCLI_AUTH when set. Like redis-cli without -e, any reply (an error too) exits 0: the server
# answers, and `baton init` reports a wrong password by its variable's name.
host=127.0.0.1 port=6379
while [ $# -gt 0 ]; do
    case $1 in
        -h) host=$2; shift 2 ;;
        -p) port=$2; shift 2 ;;
        *) break ;;
    esac
done
if [ "${1,,}" != ping ]; then
    echo "this stand-in redis-cli answers only 'ping'" >&2
    exit 2
fi
exec 3<>"/dev/tcp/$host/$port" || exit 1
if [ -n "${REDISCLI_AUTH:-}" ]; then
    printf '*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n' "${#REDISCLI_AUTH}" "$REDISCLI_AUTH" >&3
    read -r -t 3 reply <&3
fi
printf '*1\r\n$4\r\nPING\r\n' >&3
read -r -t 3 reply <&3 || exit 1
reply=${reply%$'\r'}
echo "${reply#+}"
