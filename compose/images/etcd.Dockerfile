# syntax=docker/dockerfile:1
#
# The `ha` profile's etcd: Debian's own etcd-server package (3.4 in bookworm), nothing patched. etcd is the
# replicated CAS's durable store and it is UNTRUSTED: it holds only sealed blobs the CAS members check
# against their memory (docs/CAS.md "Replicated CAS"); it gives availability, not trust. Three containers
# of this image form one cluster (compose/docker-compose.yml, services etcd-1..3).
#
# DEBIAN_IMAGE: the public debian:bookworm by default; `local/debian:bookworm` (debootstrap, see
# compose/build.sh) where no registry can be reached. Build with --network=host for apt.
ARG DEBIAN_IMAGE=debian:bookworm
FROM ${DEBIAN_IMAGE}

# The same fixed non-root uid as the other images (compose runs every container as 10001); created before
# the package so nothing else takes it. The package's own `etcd` account is not used.
ARG CDBP_UID=10001
RUN groupadd --system --gid ${CDBP_UID} cdbp \
 && useradd --system --uid ${CDBP_UID} --gid ${CDBP_UID} --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin cdbp

# policy-rc.d: the package must not try to start the system service inside the build.
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends etcd-server; \
    apt-get clean; rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/sbin/policy-rc.d /var/lib/etcd/*; \
    mkdir -p /var/lib/cdbp-etcd; chown ${CDBP_UID}:${CDBP_UID} /var/lib/cdbp-etcd; chmod 0700 /var/lib/cdbp-etcd; \
    etcd --version
# (The mount point exists with this owner so that an empty named volume is created owned by cdbp.)

USER ${CDBP_UID}:${CDBP_UID}
# Flags come from the compose service (name, advertised URLs) and ETCD_* variables (the cluster).
ENTRYPOINT ["/usr/bin/etcd"]
