# Stand-in for jaegertracing/jaeger: Jaeger v2 built with Go from the module proxy (baton/servers.py builds
# it; scripts/images-offline.sh copies it here), plus wget for the health check the real image's busybox runs.
ARG BASE=baton-offline/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends wget >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY jaeger /cmd/jaeger/jaeger-linux
ENV JAEGER_LISTEN_HOST=0.0.0.0
EXPOSE 4317 4318 13133 16686
LABEL org.baton.stand-in="jaegertracing/jaeger from a go-built jaeger"
ENTRYPOINT ["/cmd/jaeger/jaeger-linux"]
