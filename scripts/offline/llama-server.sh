#!/bin/sh
# llama.cpp's `llama-server` arguments, as docker-compose.yml passes them, for llama-cpp-python's server.
set -e
set -- "$@" --end
while [ "$1" != --end ]; do
    case $1 in
        -m|--model) set -- "$@" --model "$2"; shift 2 ;;
        --alias) set -- "$@" --model_alias "$2"; shift 2 ;;
        -c|--ctx-size) set -- "$@" --n_ctx "$2"; shift 2 ;;
        --host|--port) set -- "$@" "$1" "$2"; shift 2 ;;
        --jinja) shift ;;  # llama-cpp-python applies the model's own chat template with --chat_format
        *) echo "llama-server stand-in: unsupported argument $1" >&2; exit 2 ;;
    esac
done
shift
exec python -m llama_cpp.server --chat_format gemma "$@"
