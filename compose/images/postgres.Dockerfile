# syntax=docker/dockerfile:1
#
# Stock PostgreSQL 15 from Debian bookworm, nothing patched, for the `postgres` profile of the compose
# stack. Socket-only (no TCP listener): the attested proxy `proxy-pg`, sharing this container's network
# namespace, is the only way in. Community PostgreSQL has no key-management hook, so its files are NOT
# encrypted at rest (docs/SECURITY.md); the proxy adds attested TLS and rollback detection (WAL LSN).
# Settings: compose/postgres/*.conf; start-up: compose/postgres/entrypoint.sh.
#
# DEBIAN_IMAGE: the public debian:bookworm by default; `local/debian:bookworm` (debootstrap, see
# compose/build.sh) where no registry can be reached. Build with --network=host for apt.
ARG DEBIAN_IMAGE=debian:bookworm
FROM ${DEBIAN_IMAGE}

# The server runs as the same uid AND name as the proxy (app image): they share the 0700 datadir volume
# (sealed freshness record beside the datadir) and the socket tmpfs. Created BEFORE the package so the
# package's own `postgres` OS user gets another uid; that one is the operator's bootstrap login (peer).
ARG CDBP_UID=10001
RUN groupadd --system --gid ${CDBP_UID} cdbp \
 && useradd --system --uid ${CDBP_UID} --gid ${CDBP_UID} --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin cdbp

# policy-rc.d: the package must not start a server inside the build; createcluster.conf: nor create the
# Debian `main` cluster (the datadir is made at run time on the untrusted volume).
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    mkdir -p /etc/postgresql-common; echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold postgresql-15 postgresql-client-15; \
    rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d /etc/postgresql/15 /var/lib/postgresql/15; \
    test ! -e /var/lib/postgresql/15/main; \
    id postgres; test "$(id -u postgres)" != "${CDBP_UID}"; \
    mkdir -p /srv/untrusted /run/cdbp-pg /etc/cdbp; \
    chown ${CDBP_UID}:${CDBP_UID} /srv/untrusted /run/cdbp-pg; \
    chmod 0700 /srv/untrusted; chmod 0711 /run/cdbp-pg

COPY compose/postgres/postgresql.conf compose/postgres/pg_hba.conf compose/postgres/pg_ident.conf /etc/cdbp/
COPY compose/postgres/entrypoint.sh /usr/local/bin/cdbp-postgres-entrypoint
RUN chmod 0644 /etc/cdbp/*.conf && chmod 0755 /usr/local/bin/cdbp-postgres-entrypoint

# Server binaries first in PATH (Debian's /usr/bin/psql is a wrapper that looks for clusters).
# PGHOST/PGDATABASE: `docker exec ... -u postgres psql` reaches the server over its socket.
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGHOST=/run/cdbp-pg PGPORT=5432 PGDATABASE=postgres
USER ${CDBP_UID}:${CDBP_UID}
# SIGINT = PostgreSQL's fast shutdown (SIGTERM's smart shutdown would wait for the proxy's sessions).
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/cdbp-postgres-entrypoint"]
