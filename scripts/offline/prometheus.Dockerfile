# Stand-in for prom/prometheus: Prometheus built with Go at the pin in scripts/images-offline.sh (its web
# UI's assets are not in a plain Go build; the API and scraping are), plus wget for the health check.
ARG BASE=baton-offline/debian:bookworm
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends wget >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
LABEL org.baton.stand-in="prom/prometheus from a go-built prometheus"
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
