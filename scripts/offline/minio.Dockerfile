# Stand-in for minio/minio: MinIO and mc built with Go at the project's pins (scripts/images-offline.sh).
ARG BASE=baton-offline/debian:bookworm
FROM ${BASE}
COPY minio mc /usr/bin/
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV MINIO_UPDATE=off
VOLUME /data
EXPOSE 9000 9001
LABEL org.baton.stand-in="minio/minio from go-built minio and mc"
ENTRYPOINT ["minio"]
