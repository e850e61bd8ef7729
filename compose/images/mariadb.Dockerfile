# syntax=docker/dockerfile:1
#
# Stock MariaDB from Debian (10.11 in bookworm) with the stock hashicorp_key_management plugin, nothing
# patched. It cannot start on its own: the entrypoint waits until the attested proxy (sharing this
# container's network namespace) has verified freshness, started the loopback keyring and handed over a
# per-start token on a shared tmpfs. Encryption settings: compose/mariadb/encryption.cnf, which mirrors
# keyring/mariadb-config.ts (a test checks they agree).
#
# DEBIAN_IMAGE: the public debian:bookworm by default; `local/debian:bookworm` (debootstrap, see
# compose/build.sh) where no registry can be reached. Build with --network=host for apt.
ARG DEBIAN_IMAGE=debian:bookworm
FROM ${DEBIAN_IMAGE}

# Same uid and name as the app image (see there why): created BEFORE the package so nothing else owns it.
ARG CDBP_UID=10001
RUN groupadd --system --gid ${CDBP_UID} cdbp \
 && useradd --system --uid ${CDBP_UID} --gid ${CDBP_UID} --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin cdbp

# policy-rc.d: the package must not try to start a server inside the build.
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends mariadb-server mariadb-client mariadb-plugin-hashicorp-key-management; \
    rm -rf /var/lib/apt/lists/* /var/lib/mysql /etc/mysql/debian.cnf /usr/sbin/policy-rc.d; \
    mkdir -p /srv/untrusted /run/cdbp /run/cdbp-volatile /etc/cdbp; \
    chown ${CDBP_UID}:${CDBP_UID} /srv/untrusted /run/cdbp /run/cdbp-volatile; \
    chmod 0700 /srv/untrusted /run/cdbp /run/cdbp-volatile; \
    test -f "$(mariadbd --help --verbose 2>/dev/null | awk '/^plugin-dir/{print $2}')/hashicorp_key_management.so" \
      || test -f /usr/lib/mysql/plugin/hashicorp_key_management.so

COPY compose/mariadb/server.cnf compose/mariadb/encryption.cnf /etc/cdbp/
COPY compose/mariadb/client.cnf /etc/mysql/mariadb.conf.d/99-cdbp-client.cnf
COPY compose/mariadb/entrypoint.sh /usr/local/bin/cdbp-mariadb-entrypoint
RUN chmod 0644 /etc/cdbp/*.cnf /etc/mysql/mariadb.conf.d/99-cdbp-client.cnf \
 && chmod 0755 /usr/local/bin/cdbp-mariadb-entrypoint

USER ${CDBP_UID}:${CDBP_UID}
ENTRYPOINT ["/usr/local/bin/cdbp-mariadb-entrypoint"]
