# Stand-in for python:3.11-slim, from Debian bookworm's own Python 3.11 (scripts/images-offline.sh).
ARG BASE=baton-offline/debian:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python
# The host's CA bundle, so that pip inside image builds reaches PyPI through a site's TLS proxy. Copied
# after apt, whose ca-certificates package would rewrite the bundle.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# A venv on PATH plays the role of the official image's /usr/local Python: `python` and `pip` are
# Python 3.11, and pip installs without touching Debian's packages.
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    LANG=C.UTF-8
LABEL org.baton.stand-in="python:3.11-slim from Debian bookworm"
CMD ["python3"]
