# syntax=docker/dockerfile:1
#
# The `postgres` profile's image: the app image (the attested proxy, same code, same measurement) plus
# stock Debian PostgreSQL 15 and gocryptfs. The proxy runs PostgreSQL itself (CDBP_MANAGE_POSTGRES=1),
# after attestation and the freshness check, inside an encrypted directory it mounts with the key the CAS
# provisions (docs/PG-AT-REST.md): the `pg-untrusted` volume only ever holds ciphertext.
#
# The container must run as root with CAP_SYS_ADMIN and /dev/fuse (the FUSE mount; see compose/README.md);
# PostgreSQL itself runs as the unprivileged `postgres` OS user the package creates.
#
# APP_IMAGE: the app image built just before (compose/build.sh). Build with --network=host for apt.
ARG APP_IMAGE=confidential-db-proxy/app:dev
FROM ${APP_IMAGE}
USER root

# policy-rc.d: the package must not start a server inside the build; createcluster.conf: nor create the
# Debian `main` cluster (the proxy runs initdb inside the encrypted directory at the first start).
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    mkdir -p /etc/postgresql-common; echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold postgresql-15 postgresql-client-15 gocryptfs fuse3; \
    rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d /etc/postgresql/15 /var/lib/postgresql/15; \
    test -x /usr/bin/gocryptfs; test -x /usr/bin/fusermount3; test -x /usr/bin/setpriv; id postgres; \
    mkdir -p /srv/untrusted /run/cdbp-pg; chmod 0700 /srv/untrusted; chmod 0711 /run/cdbp-pg

# Server binaries first in PATH (Debian's /usr/bin/psql is a wrapper that looks for clusters).
# PGHOST/PGPORT/PGDATABASE: `docker exec -u postgres ... psql` reaches the server over its socket, which
# lives inside the encrypted mount (CDBP_PG_RUN_DIR/plain/pg/run).
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGHOST=/run/cdbp-pg/plain/pg/run PGPORT=5432 PGDATABASE=postgres
# Root in the container: the FUSE mount. Everything else (PostgreSQL) runs unprivileged.
USER 0:0
CMD ["node", "/app/bin/cdbp.js", "proxy"]
